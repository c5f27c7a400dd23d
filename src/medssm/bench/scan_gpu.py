"""`medssm bench scan --device cuda`: the selective-scan backends on a CUDA GPU, against the GPU's own limit.

For each shape (batch, d, N, L) it times, with CUDA events (median of ``repeats`` after warm-up), the forward
and forward+backward of the "triton" backend, the "torch" backend on the same GPU and, when it is
importable there, mamba_ssm's CUDA kernel (``selective_scan_fn``), all on the inputs of
:func:`medssm.bench.scan.make_inputs` (selective B/C, D, z gate, delta_bias with softplus, fp32). The bound
is the bytes the forward must move (:func:`medssm.bench.scan.op_bytes`: read u, delta, z, B, C, write the
output) over the copy bandwidth of a large device-to-device copy measured in the same run. It also reports
each backend's peak extra GPU memory (allocator high-water mark above the inputs) and the largest difference
of each backend's output from the torch backend's, then writes scan_cuda.json.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..engine.files import write_text_atomic
from ..ops import available_backends
from .scan import _NAMES, DEFAULT_SHAPES, Row, forward_backward, make_inputs, op_bytes, scan_call

GPU_SHAPES = (*DEFAULT_SHAPES, (8, 1536, 16, 2048), (2, 768, 16, 16384))
NO_GPU = "--device cuda needs a CUDA GPU; none found"


def mamba_ssm_available() -> bool:
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
    except ImportError:
        return False
    return True


def _mamba_ssm_call(x: dict[str, torch.Tensor]) -> torch.Tensor:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    return selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
                             delta_bias=x["delta_bias"], delta_softplus=True)


def call_for(backend: str) -> Callable[[dict], torch.Tensor]:
    return _mamba_ssm_call if backend == "mamba_ssm" else (lambda v: scan_call(backend, v))


def cuda_time(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median seconds of ``fn`` timed with CUDA events, after ``warmup`` calls (Triton compiles on the first)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth_cuda(nbytes: int = 1 << 30, repeats: int = 10) -> float:
    """Bytes per second (read + write) of a device-to-device copy of ``nbytes``."""
    src = torch.empty(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    return 2 * nbytes / cuda_time(lambda: dst.copy_(src), repeats)


def peak_extra_mb(fn: Callable[[], object]) -> float:
    """Allocator high-water mark above what was allocated before ``fn`` (MB)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def bench_shape_cuda(shape: tuple[int, int, int, int], backends: list[str], repeats: int) -> tuple[list[Row], dict]:
    """Rows of one shape, and each backend's largest output difference from the torch backend's."""
    x = {k: v.cuda() for k, v in make_inputs(*shape).items()}
    rows, diffs, outputs = [], {}, {}
    for backend in backends:
        call = call_for(backend)
        row = Row(shape, backend)
        with torch.no_grad():
            outputs[backend] = call(x).float()
            row.forward_s = cuda_time(lambda c=call: c(x), repeats)
            row.peak_extra_forward_mb = peak_extra_mb(lambda c=call: c(x))
        run = forward_backward(call, x, _NAMES)
        row.forward_backward_s = cuda_time(run, repeats)
        row.peak_extra_forward_backward_mb = peak_extra_mb(run)
        rows.append(row)
        print(f"  {backend:>9}: fwd {row.forward_s * 1e3:9.3f} ms  fwd+bwd {row.forward_backward_s * 1e3:9.3f} ms",
              flush=True)
    if "torch" in outputs:
        diffs = {b: (o - outputs["torch"]).abs().max().item() for b, o in outputs.items() if b != "torch"}
    return rows, diffs


def format_gpu_table(rows: list[Row], copy_bytes_per_s: float) -> str:
    """Markdown table: times, speed-ups against the torch backend and mamba_ssm, ratio to the bandwidth bound."""
    lines = ["| shape (b, d, N, L) | backend | fwd ms | fwd+bwd ms | (fwd+bwd)/fwd | vs torch (fwd) "
             "| vs mamba_ssm (fwd) | fwd / bound | peak extra MB fwd | peak extra MB fwd+bwd |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by_shape: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        by_shape.setdefault(tuple(r.shape), {})[r.backend] = r
    for shape, group in by_shape.items():
        bound = op_bytes(shape) / copy_bytes_per_s
        for name, r in group.items():
            ref, mamba = group.get("torch"), group.get("mamba_ssm")
            cells = [
                str(shape), name, f"{r.forward_s * 1e3:.3f}", f"{r.forward_backward_s * 1e3:.3f}",
                f"{r.forward_backward_s / r.forward_s:.2f}",
                f"{ref.forward_s / r.forward_s:.1f}x" if ref else "-",
                f"{mamba.forward_s / r.forward_s:.2f}x" if mamba else "-",
                f"{r.forward_s / bound:.2f} (bound {bound * 1e3:.3f} ms)",
                f"{r.peak_extra_forward_mb:.1f}", f"{r.peak_extra_forward_backward_mb:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_cuda(shapes=GPU_SHAPES, backends: list[str] | None = None, repeats: int = 20,
             out_dir: Path | None = None) -> dict:
    """Run the GPU benchmark, print the table and write scan_cuda.json under ``out_dir``."""
    if not torch.cuda.is_available():
        raise RuntimeError(NO_GPU)
    backends = list(backends or [b for b in ("triton", "torch") if b in available_backends("cuda")])
    if mamba_ssm_available() and "mamba_ssm" not in backends:
        backends.append("mamba_ssm")
    name = torch.cuda.get_device_name()
    print(f"medssm bench scan --device cuda: {name}, torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"backends {backends}", flush=True)
    copy = copy_bandwidth_cuda()
    print(f"device-to-device copy: {copy / 1e9:.0f} GB/s", flush=True)
    rows, diffs = [], {}
    for shape in shapes:
        print(f"shape (b, d, N, L) = {tuple(shape)}", flush=True)
        shape_rows, diffs[str(tuple(shape))] = bench_shape_cuda(tuple(shape), backends, repeats)
        rows += shape_rows
        print(f"  max |out - torch backend's|: {diffs[str(tuple(shape))]}", flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "device": name, "torch": torch.__version__,
              "cuda": torch.version.cuda, "copy_bytes_per_s": copy, "rows": [asdict(r) for r in rows],
              "max_abs_diff_vs_torch": diffs, "table": format_gpu_table(rows, copy)}
    print("\n" + report["table"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "scan_cuda.json", json.dumps(report, indent=2))
        print(f"\nwrote {out_dir / 'scan_cuda.json'}")
    return report
