"""`medssm bench scan`: time, memory and machine limits of every selective-scan backend in one run.

For each shape (batch, d, N, L) it measures the median forward and forward+backward time of each backend
on Mamba-like inputs (selective B/C, D, z gate, delta_bias with softplus), the speed-up against
"reference" and against mambapy's pscan path (when mambapy is installed), and the machine's own limit
for this op measured in the same run: the scan must evaluate batch*d*L*N exponentials and move its
(batch, d, L) tensors through memory, so the bound is max(exp count / measured vectorised exp rate,
bytes / measured copy bandwidth). The exp rate is the faster of torch.exp and the cpu kernels' own
polynomial exp, each on in-cache buffers on every thread (the latter was ~5x faster on the AVX-512 VM); the
kernels' exp is measured at the start and again after each shape, and the fastest rate is used.
It also reports each backend's peak extra memory (resident-set growth during the call, inputs excluded),
the numba compile time with a cold and a warm cache, and writes a JSON and a log-log PNG of forward time
against L. With ``--split`` it also times the cpu backend's kernels directly (:func:`cpu_split`), to show how
much of its (fwd+bwd)/fwd is the kernels', how much running them one after the other adds, and how much
autograd and Python add.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import malloc_note, openmp_spin_note
from ..engine.files import atomic_path, write_text_atomic
from ..ops import available_backends, selective_scan

DEFAULT_SHAPES = ((1, 192, 16, 1024), (1, 192, 16, 4096), (2, 384, 16, 4096), (1, 96, 16, 16384))
SCALING_LENGTHS = (512, 2048, 8192, 32768)  # the log-log plot: b=1, d=96, N=16


def make_inputs(batch: int, dim: int, d_state: int, seqlen: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Mamba-like inputs: A = -(1..N), delta = softplus(x + bias) with softplus(bias) in [1e-3, 0.1]."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.exp(torch.rand(dim, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "u": torch.randn(batch, dim, seqlen, generator=gen),
        "delta": 0.5 * torch.randn(batch, dim, seqlen, generator=gen),
        "A": -torch.arange(1, d_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, d_state, seqlen, generator=gen),
        "C": torch.randn(batch, d_state, seqlen, generator=gen),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, seqlen, generator=gen),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),  # inverse softplus
    }


def scan_call(backend: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """selective_scan with ``backend`` on :func:`make_inputs`' tensors, as Mamba calls it."""
    return selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], z=x["z"],
                          delta_bias=x["delta_bias"], delta_softplus=True, backend=backend)


def _mambapy_call(x: dict[str, torch.Tensor]) -> torch.Tensor:
    """mambapy's MambaBlock.selective_scan on the same inputs: (b, L, d) layout, pscan over (b, L, d, N).

    Softplus and the z gate run outside the scan in mambapy; we do them here too so both compute the same.
    """
    from mambapy.pscan import pscan

    u, delta, z = x["u_bld"], x["delta_bld"], x["z_bld"]
    delta = F.softplus(delta + x["delta_bias"])
    delta_a = torch.exp(delta.unsqueeze(-1) * x["A"])
    bx = delta.unsqueeze(-1) * x["B_bln"].unsqueeze(2) * u.unsqueeze(-1)
    hs = pscan(delta_a, bx)
    y = (hs @ x["C_bln"].unsqueeze(-1)).squeeze(3) + x["D"] * u
    return y * F.silu(z)


def _with_mambapy_layout(x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    extra = {f"{k}_bld": x[k].transpose(1, 2).contiguous() for k in ("u", "delta", "z")}
    extra |= {f"{k}_bln": x[k].transpose(1, 2).contiguous() for k in ("B", "C")}
    return x | extra


def mambapy_available() -> bool:
    try:
        import mambapy.pscan  # noqa: F401
    except ImportError:
        return False
    return True


def median_time(fn: Callable[[], object], repeats: int, warmup_s: float = 0.2) -> float:
    """Median wall time of ``repeats`` calls after warming up for ``warmup_s`` (at least one call: the JIT
    load; the first calls after another backend also pay fresh-page faults for their outputs)."""
    start = time.perf_counter()
    fn()
    while time.perf_counter() - start < warmup_s:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(call: Callable[[dict], torch.Tensor], x: dict[str, torch.Tensor],
                     names: tuple[str, ...]) -> Callable[[], None]:
    """A function running ``call`` forward and backward on leaf copies of ``x`` (gradients for ``names``)."""
    leaves = {k: v.detach().clone().requires_grad_(k in names) for k, v in x.items()}
    grad = torch.randn_like(call(x))

    def run() -> None:
        for v in leaves.values():
            v.grad = None
        call(leaves).backward(grad)

    return run


# ---------------------------------------------------------------- machine limits


def torch_exp_rate(threads: int) -> float:
    """Vectorised exps per second: torch.exp over in-cache fp32 buffers (best of a few buffer sizes)."""
    torch.set_num_threads(threads)
    best = 0.0
    for size in (1 << 14, 1 << 16, 1 << 18):
        src, dst = -torch.rand(size), torch.empty(size)
        reps = max(1, (1 << 24) // size)

        def run(src=src, dst=dst, reps=reps) -> None:
            for _ in range(reps):
                torch.exp(src, out=dst)

        best = max(best, size * reps / median_time(run, 5))
    return best


def _measure_kernel_exp(limits: dict, threads: int) -> None:
    """Measure the cpu kernels' exp rate (again) and set limits["exp_per_s"], the bound's exp rate, to the
    fastest exp seen so far. A bound is what the machine demonstrably does: a measurement taken while the
    shared VM ran slow would make the bound lenient (one run measured 11.0 G/s at its start, others 14-16)."""
    if "cpu" in available_backends("cpu"):
        from ..ops.scan_cpu import exp_throughput

        limits.setdefault("kernel_exp_samples_per_s", []).append(exp_throughput(threads))
        limits["kernel_exp_per_s"] = max(limits["kernel_exp_samples_per_s"])
    # the bound uses the fastest exp this machine demonstrably has: a slower library exp is not a limit
    limits["exp_per_s"] = max(limits["torch_exp_per_s"], limits.get("kernel_exp_per_s", 0.0))


def copy_bandwidth(threads: int) -> float:
    """Bytes per second (read + write) of a 256 MB fp32 copy."""
    torch.set_num_threads(threads)
    src = torch.rand(1 << 26)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_time(lambda: dst.copy_(src), 5)


# ---------------------------------------------------------------- memory


def rss_bytes(field_name: str) -> int:
    """This process's resident-set figure ``field_name`` ("VmRSS" now, "VmHWM" its high-water mark) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field_name} not in /proc/self/status")


def memory_supported() -> bool:
    return sys.platform.startswith("linux") and os.path.exists("/proc/self/clear_refs")


def peak_extra_memory(fn: Callable[[], object]) -> int:
    """Growth of the resident set's high-water mark while ``fn`` runs (Linux: VmHWM reset via clear_refs).

    Meaningful when freed memory leaves the resident set, as in the child processes of
    :func:`measure_memory` (glibc serves allocations >= 64 KiB with mmap there).
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = rss_bytes("VmRSS")
    fn()
    return max(0, rss_bytes("VmHWM") - before)


_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "u_bld", "delta_bld", "z_bld", "B_bln", "C_bln")


def _call_for(backend: str, x: dict[str, torch.Tensor]) -> tuple[Callable[[dict], torch.Tensor], dict]:
    if backend == "mambapy":
        return _mambapy_call, _with_mambapy_layout(x)
    return (lambda v: scan_call(backend, v)), x


def memory_child(backend: str, shape: tuple[int, int, int, int], threads: int) -> dict[str, float]:
    """Peak extra memory (MB) of one forward and one forward+backward; run in a fresh process."""
    torch.set_num_threads(threads)
    call, x = _call_for(backend, make_inputs(*shape))
    with torch.no_grad():
        call(x)  # load kernels outside the measurement
        fwd = peak_extra_memory(lambda: call(x))
    run = forward_backward(call, x, _NAMES)
    run()
    fwd_bwd = peak_extra_memory(run)
    return {"forward_mb": fwd / 2**20, "forward_backward_mb": fwd_bwd / 2**20}


def measure_memory(backend: str, shape: tuple[int, int, int, int], threads: int) -> dict[str, float]:
    """:func:`memory_child` in a fresh process, so that timings and other backends cannot distort it and
    freed tensors leave the resident set (MALLOC_MMAP_THRESHOLD_: allocations >= 64 KiB are mmapped)."""
    code = ("import json, sys; from medssm.bench.scan import memory_child;"
            f"print(json.dumps(memory_child({backend!r}, {tuple(shape)!r}, {threads})))")
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": str(1 << 16)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- compile time


def numba_compile_times() -> dict[str, float]:
    """First-call time of the cpu backend (forward + backward) in fresh processes: cold and warm cache."""
    code = ("import time, torch; from medssm.bench.scan import make_inputs, scan_call, forward_backward;"
            "x = make_inputs(1, 16, 16, 64); t = time.perf_counter();"
            "forward_backward(lambda v: scan_call('cpu', v), x, ('u',))(); print(time.perf_counter() - t)")
    result = {}
    with tempfile.TemporaryDirectory() as cold:
        for label in ("cold_cache_s", "warm_cache_s"):  # the first run fills the cache the second loads
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                  env=os.environ | {"NUMBA_CACHE_DIR": cold}, check=True)
            result[label] = float(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- where the cpu backward's ratio goes


def _evict_caches(buffer: np.ndarray) -> None:
    """Read ``buffer`` (larger than the last-level cache) so that what a call left in cache is gone. A read,
    not a write: evicting dirty lines would charge their write-back to the call timed next; and in NumPy, on
    one thread: a parallel torch op would leave torch's OpenMP workers spinning on the cores the call needs."""
    buffer.sum()


def cpu_split(shape: tuple[int, int, int, int], repeats: int) -> dict[str, float]:
    """The cpu backend's (fwd+bwd)/fwd taken apart (ms, medians): its forward and backward kernels timed
    directly (no autograd, no dtype or layout handling), each repeated on the same tensors so that its inputs
    stay in cache ("hot"); the two kernels run one after the other, as in a training step; the forward after
    a 128 MB read has evicted the caches ("cold"); and the public calls that the table times."""
    from ..ops import scan_cpu

    x = make_inputs(*shape)
    plan = scan_cpu.ScanPlan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    gout = torch.randn_like(x["u"])
    _, _, saved = scan_cpu.scan_forward(plan, save=True)

    def in_sequence() -> None:
        _, _, fresh = scan_cpu.scan_forward(plan, save=True)
        scan_cpu.scan_backward(plan, fresh, gout)

    buffer = np.ones(1 << 25, np.float32)
    cold = []
    for _ in range(repeats):
        _evict_caches(buffer)
        start = time.perf_counter()
        scan_cpu.scan_forward(plan, save=False)
        cold.append(time.perf_counter() - start)
    with torch.no_grad():
        api_fwd = median_time(lambda: scan_call("cpu", x), repeats)
    times = {
        "kernel_forward": median_time(lambda: scan_cpu.scan_forward(plan, save=False), repeats),
        "kernel_forward_cold": statistics.median(cold),
        "kernel_forward_save": median_time(lambda: scan_cpu.scan_forward(plan, save=True), repeats),
        "kernel_backward": median_time(lambda: scan_cpu.scan_backward(plan, saved, gout), repeats),
        "kernels_in_sequence": median_time(in_sequence, repeats),
        "api_forward": api_fwd,
        "api_forward_backward": median_time(forward_backward(lambda v: scan_call("cpu", v), x, _NAMES), repeats),
    }
    return {k: v * 1e3 for k, v in times.items()}


def format_split(shape: tuple[int, int, int, int], ms: dict[str, float]) -> str:
    """One shape's :func:`cpu_split` as text, with the ratios each level of it gives."""
    hot = (ms["kernel_forward_save"] + ms["kernel_backward"]) / ms["kernel_forward"]
    return (f"cpu split {shape}: kernels: forward {ms['kernel_forward']:.2f} ms (cold cache "
            f"{ms['kernel_forward_cold']:.2f}), forward saving for the backward {ms['kernel_forward_save']:.2f}, "
            f"backward {ms['kernel_backward']:.2f}: (fwd+bwd)/fwd {hot:.2f} with both hot; in sequence "
            f"{ms['kernels_in_sequence']:.2f} ms ({ms['kernels_in_sequence'] / ms['kernel_forward']:.2f}); "
            f"public calls: forward {ms['api_forward']:.2f} ms, forward+backward {ms['api_forward_backward']:.2f} "
            f"({ms['api_forward_backward'] / ms['api_forward']:.2f}; autograd and Python "
            f"{ms['api_forward_backward'] - ms['kernels_in_sequence']:.2f} ms)")


# ---------------------------------------------------------------- the benchmark


@dataclass
class Row:
    shape: tuple[int, int, int, int]
    backend: str
    forward_s: float | None = None
    forward_backward_s: float | None = None
    peak_extra_forward_mb: float | None = None
    peak_extra_forward_backward_mb: float | None = None


def _repeats(backend: str, work: int, repeats: int) -> int:
    # the reference loop takes seconds on big shapes: fewer repeats there keep the run short
    return max(3, repeats // 4) if backend in ("reference", "mambapy") and work > 20_000_000 else repeats


def bench_shape(shape: tuple[int, int, int, int], backends: list[str], repeats: int, memory: bool,
                backward: bool) -> list[Row]:
    x = make_inputs(*shape)
    rows = []
    for backend in backends:
        call, xm = _call_for(backend, x)
        n = _repeats(backend, math.prod(shape), repeats)
        row = Row(shape, backend)
        with torch.no_grad():
            row.forward_s = median_time(lambda c=call, v=xm: c(v), n)
        if backward:
            row.forward_backward_s = median_time(forward_backward(call, xm, _NAMES), n)
        if memory and memory_supported():
            mem = measure_memory(backend, shape, torch.get_num_threads())
            row.peak_extra_forward_mb = mem["forward_mb"]
            row.peak_extra_forward_backward_mb = mem["forward_backward_mb"]
        rows.append(row)
        print(f"  {backend:>9}: fwd {row.forward_s * 1e3:9.2f} ms"
              + (f"  fwd+bwd {row.forward_backward_s * 1e3:9.2f} ms" if row.forward_backward_s else ""),
              flush=True)
    return rows


def op_bytes(shape: tuple[int, int, int, int]) -> int:
    """fp32 bytes the forward must move at least: read u, delta, z, B, C; write the output."""
    b, d, n, seqlen = shape
    return 4 * (4 * b * d * seqlen + 2 * b * n * seqlen)


def run(shapes=DEFAULT_SHAPES, backends: list[str] | None = None, repeats: int = 10,
        threads: int | None = None, out_dir: Path | None = None, memory: bool = True, compile_time: bool = True,
        scaling: bool = True, split: bool = False) -> dict:
    """Run the benchmark, print the table, write scan.json and scan_vs_length.png under ``out_dir``; with
    ``split``, also take the cpu backend's (fwd+bwd)/fwd apart at each shape (:func:`cpu_split`)."""
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    backends = list(backends or [b for b in ("reference", "torch", "cpu") if b in available_backends("cpu")])
    if mambapy_available() and "mambapy" not in backends:
        backends.append("mambapy")
    print(f"medssm bench scan: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {threads} threads, {openmp_spin_note()}; {malloc_note()}; "
          f"backends {backends}", flush=True)
    limits = {"torch_exp_per_s": torch_exp_rate(threads), "copy_bytes_per_s": copy_bandwidth(threads)}
    _measure_kernel_exp(limits, threads)
    kernel_exp = (f", the cpu kernels' polynomial exp {limits['kernel_exp_per_s'] / 1e9:.2f} G/s"
                  if "kernel_exp_per_s" in limits else "")
    print(f"machine: exp (in-cache fp32) torch.exp {limits['torch_exp_per_s'] / 1e9:.2f} G/s{kernel_exp}; "
          f"copy {limits['copy_bytes_per_s'] / 1e9:.1f} GB/s", flush=True)
    compile_s = numba_compile_times() if compile_time and "cpu" in backends else None
    if compile_s:
        print(f"cpu backend first call: {compile_s['cold_cache_s']:.1f} s with a cold numba cache, "
              f"{compile_s['warm_cache_s']:.1f} s warm", flush=True)
    rows: list[Row] = []
    splits: list[str] = []
    for shape in shapes:
        print(f"shape (b, d, N, L) = {shape}", flush=True)
        rows += bench_shape(tuple(shape), backends, repeats, memory, backward=True)
        if split and "cpu" in backends:
            splits.append(format_split(tuple(shape), cpu_split(tuple(shape), repeats)))
            print(splits[-1], flush=True)
        _measure_kernel_exp(limits, threads)
    scaling_rows: list[Row] = []
    if scaling:
        print("scaling (b, d, N) = (1, 96, 16), forward only", flush=True)
        for seqlen in SCALING_LENGTHS:
            scaling_rows += bench_shape((1, 96, 16, seqlen), backends, max(3, repeats // 2), False, False)
    if len(limits.get("kernel_exp_samples_per_s", ())) > 1:
        samples = ", ".join(f"{r / 1e9:.2f}" for r in limits["kernel_exp_samples_per_s"])
        print(f"the cpu kernels' exp, measured again after each shape: {samples} G/s; the bound uses the fastest",
              flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "threads": threads, "torch": torch.__version__, "python": platform.python_version(),
                    "openmp": openmp_spin_note(), "malloc": malloc_note()},
        "limits": limits,
        "compile": compile_s,
        "rows": [asdict(r) for r in rows],
        "scaling": [asdict(r) for r in scaling_rows],
        "cpu_split": splits,
    }
    report["table"] = format_table(rows, limits)
    print()
    print(report["table"])
    if splits:
        print("\n" + "\n".join(splits))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "scan.json", json.dumps(report, indent=2))
        plot_scaling(scaling_rows or rows, out_dir / "scan_vs_length.png")
        print(f"\nwrote {out_dir / 'scan.json'} and {out_dir / 'scan_vs_length.png'}")
    return report


def format_table(rows: list[Row], limits: dict) -> str:
    """Markdown table: times, speed-ups against reference and mambapy, ratio to the machine bound."""
    lines = ["| shape (b, d, N, L) | backend | fwd ms | fwd+bwd ms | (fwd+bwd)/fwd | vs reference (fwd) "
             "| vs mambapy (fwd) | fwd / bound | peak extra MB fwd (x out) | peak extra MB fwd+bwd |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    by_shape: dict[tuple, dict[str, Row]] = {}
    for r in rows:
        by_shape.setdefault(tuple(r.shape), {})[r.backend] = r
    for shape, group in by_shape.items():
        b, d, n, seqlen = shape
        bound = max(b * d * seqlen * n / limits["exp_per_s"], op_bytes(shape) / limits["copy_bytes_per_s"])
        out_mb = 4 * b * d * seqlen / 2**20
        for name, r in group.items():
            ref, mpy = group.get("reference"), group.get("mambapy")
            cells = [
                str(shape), name, f"{r.forward_s * 1e3:.2f}",
                f"{r.forward_backward_s * 1e3:.2f}" if r.forward_backward_s else "-",
                f"{r.forward_backward_s / r.forward_s:.2f}" if r.forward_backward_s else "-",
                f"{ref.forward_s / r.forward_s:.1f}x" if ref else "-",
                f"{mpy.forward_s / r.forward_s:.1f}x" if mpy else "-",
                f"{r.forward_s / bound:.2f} (bound {bound * 1e3:.2f} ms)",
                f"{r.peak_extra_forward_mb:.1f} ({r.peak_extra_forward_mb / out_mb:.2f}x)"
                if r.peak_extra_forward_mb is not None else "-",
                "-" if r.peak_extra_forward_backward_mb is None else f"{r.peak_extra_forward_backward_mb:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scaling(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for backend in dict.fromkeys(r.backend for r in rows):
        pts = sorted((r.shape[3], r.forward_s) for r in rows if r.backend == backend)
        ax.loglog([p[0] for p in pts], [p[1] * 1e3 for p in pts], "o-", label=backend)
    if rows:
        lengths = sorted({r.shape[3] for r in rows})
        base = min(r.forward_s for r in rows if r.shape[3] == lengths[0]) * 1e3
        linear = [base * seqlen / lengths[0] for seqlen in lengths]
        ax.loglog(lengths, linear, "k--", lw=0.8, label="linear in L")
    b, d, n, _ = rows[0].shape if rows else (0, 0, 0, 0)
    ax.set_xlabel("sequence length L")
    ax.set_ylabel("forward time (ms)")
    ax.set_title(f"selective_scan forward, b={b}, d={d}, N={n}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
