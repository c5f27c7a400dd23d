"""`medssm bench ehr`: time and peak memory of the event-sequence models (``ehr_mamba``, ``ehr_transformer``)
for one forward + backward against sequence length (the issue's 512 to 32k tokens).

Each (model, length) runs in a fresh Python process (as ``bench models``): the model is built with the
given width and depth on the PhysioNet vocabulary, fed one packed sequence of ``length`` real tokens (batch
1, :func:`~medssm.layers.events.packed_event_input`), and, after one warm-up call, the **peak memory** of a
forward + backward (growth of the resident set's high-water mark, glibc's mmap threshold at 64 KiB so freed
blocks leave it; the weights and input excluded) and the **median time** of ``repeats`` calls, under the
malloc setting of the process that runs the benchmark (as ``bench models``), are taken.

Attention keeps (heads x L x L) scores per layer for the backward, so a transformer case whose estimate
``depth * heads * L^2 * 4 bytes * 3`` exceeds ``max_memory_gb`` is skipped (not run) rather than allowed to
exhaust the machine's memory; a case over ``max_seconds`` a call is stopped; either way the longer lengths of
that model are skipped too. Log-log slopes of time and memory against length say how each grows (1 =
linear, 2 = quadratic). Results: a printed markdown table, ``ehr.json`` and ``ehr.png`` in ``out_dir``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..engine.files import atomic_path, write_text_atomic
from ..layers.events import packed_event_input
from ..models import count_parameters, create_model, get_entry
from .models import _MEMORY_MMAP_THRESHOLD, _mallopt, _restore_malloc, loglog_slope
from .scan import memory_supported, peak_extra_memory

DEFAULT_MODELS = ("ehr_mamba", "ehr_transformer")
DEFAULT_LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
VOCAB = 412
_MARK = "MEDSSM-BENCH-EHR "


@dataclass
class Row:
    model: str
    length: int
    params: int | None = None
    ms: float | None = None
    peak_mb: float | None = None
    skipped: str | None = None


def attention_estimate_gb(length: int, depth: int, heads: int) -> float:
    """The transformer's attention memory for one forward + backward (scores, softmax, dropout mask)."""
    return depth * heads * length ** 2 * 4 * 3 / 2**30


def measure(model_name: str, length: int, d_model: int, depth: int, repeats: int, max_seconds: float,
            fresh_process: bool = False, medssm_malloc: bool = False) -> Row:
    """One case in this process; a failure or a call over ``max_seconds`` is a skipped row. The timed calls
    run under the benchmarking process's malloc setting (``medssm_malloc``), not the memory measurement's."""
    row = Row(model_name, length)
    memory = fresh_process and memory_supported() and _mallopt(_MEMORY_MMAP_THRESHOLD)
    try:
        torch.manual_seed(0)
        model = create_model(model_name, in_channels=VOCAB, out_channels=2, d_model=d_model, depth=depth).train()
        row.params = count_parameters(model)
        x = packed_event_input(1, VOCAB, (length,))

        def step() -> None:
            model(x).square().sum().backward()
            model.zero_grad(set_to_none=True)

        started = time.perf_counter()
        step()  # warm-up
        if time.perf_counter() - started > max_seconds:
            raise TimeoutError(f"one call took more than --max-seconds {max_seconds:g}")
        if memory:
            row.peak_mb = peak_extra_memory(step) / 2**20
            _restore_malloc(medssm_malloc)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        row.ms = 1e3 * statistics.median(times)
    except Exception as error:  # noqa: BLE001  (a failing length is a row, never the end of the run)
        row.skipped = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return row


def _child_main(spec: str) -> None:
    args = json.loads(spec)
    torch.set_num_threads(args.pop("threads"))
    print(_MARK + json.dumps(asdict(measure(**args, fresh_process=True))), flush=True)


def measure_in_subprocess(model_name: str, length: int, d_model: int, depth: int, repeats: int,
                          max_seconds: float, threads: int) -> Row:
    from ..runtime import _applied

    spec = json.dumps({"model_name": model_name, "length": length, "d_model": d_model, "depth": depth,
                       "repeats": repeats, "max_seconds": max_seconds, "threads": threads,
                       "medssm_malloc": _applied["malloc"]})
    code = "import sys; from medssm.bench.ehr import _child_main; _child_main(sys.argv[1])"
    limit = (repeats + 3) * max_seconds + 60
    try:
        proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return Row(model_name, length, skipped=f"killed after {limit:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            return Row(**json.loads(line[len(_MARK):]))
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return Row(model_name, length, skipped=f"process failed (exit {proc.returncode}): {tail}")


def format_table(rows: list[Row]) -> str:
    lines = ["| model | params | length | fwd+bwd ms | peak MB |", "|---|--:|--:|--:|--:|"]
    for r in rows:
        time_cell = f"{r.ms:.1f}" if r.skipped is None else f"skipped: {r.skipped.replace('|', '/')}"
        peak = "-" if r.peak_mb is None else f"{r.peak_mb:.1f}"
        lines.append(f"| {r.model} | {'-' if r.params is None else f'{r.params:,}'} | {r.length} | {time_cell} | "
                     f"{peak} |")
    return "\n".join(lines)


def slopes(rows: list[Row]) -> dict[str, dict[str, float | None]]:
    """Per model: log-log slopes of time and peak memory against length over the lengths that ran."""
    out = {}
    for name in dict.fromkeys(r.model for r in rows):
        ran = [r for r in rows if r.model == name and r.skipped is None]
        lengths = [r.length for r in ran]
        out[name] = {"time_slope": loglog_slope(lengths, [r.ms for r in ran]),
                     "memory_slope": loglog_slope(lengths, [r.peak_mb for r in ran])}
    return out


def plot(rows: list[Row], path: Path) -> None:
    """Log-log time and peak memory against length, one line per model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, attr, label in ((axes[0], "ms", "forward + backward time (ms)"), (axes[1], "peak_mb", "peak memory (MB)")):
        for name in dict.fromkeys(r.model for r in rows):
            points = sorted((r.length, getattr(r, attr)) for r in rows
                            if r.model == name and r.skipped is None and getattr(r, attr))
            if points:
                ax.loglog(*zip(*points, strict=True), "o-", label=name, base=2)
        ax.set(xlabel="sequence length (tokens, batch 1)", ylabel=label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def run(models: tuple[str, ...] = DEFAULT_MODELS, lengths: tuple[int, ...] = DEFAULT_LENGTHS, d_model: int = 64,
        depth: int = 2, heads: int = 4, repeats: int = 3, max_seconds: float = 120.0,
        max_memory_gb: float | None = None, threads: int | None = None, out_dir: Path | None = None,
        isolate: bool = True) -> dict:
    """Run the benchmark (module docstring); ``isolate=False`` measures in this process (no memory figures)."""
    for name in models:
        if get_entry(name).task != "events":
            raise ValueError(f"bench ehr measures event-sequence models; {name!r} is a {get_entry(name).task} model")
    threads = threads or torch.get_num_threads()
    total_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 8.0
    max_memory_gb = max_memory_gb or total_gb / 2
    rows, stopped = [], set()
    for name in models:
        for length in sorted(set(lengths)):
            if name in stopped:
                rows.append(Row(name, length, skipped="a shorter length was skipped"))
            elif name == "ehr_transformer" and attention_estimate_gb(length, depth, heads) > max_memory_gb:
                needed = attention_estimate_gb(length, depth, heads)
                rows.append(Row(name, length, skipped=f"attention needs ~{needed:.0f} GB > --max-memory-gb "
                                                      f"{max_memory_gb:.0f}"))
            elif isolate:
                rows.append(measure_in_subprocess(name, length, d_model, depth, repeats, max_seconds, threads))
            else:
                torch.set_num_threads(threads)
                rows.append(measure(name, length, d_model, depth, repeats, max_seconds))
            if rows[-1].skipped is not None:
                stopped.add(name)
            peak = "-" if rows[-1].peak_mb is None else f"{rows[-1].peak_mb:.1f}"
            print(f"  {name} L={length}: " + (f"{rows[-1].ms:.1f} ms, peak {peak} MB"
                                               if rows[-1].skipped is None else rows[-1].skipped), flush=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "threads": threads, "torch": torch.__version__, "memory_gb": round(total_gb, 1)},
              "settings": {"d_model": d_model, "depth": depth, "heads": heads, "repeats": repeats,
                           "max_seconds": max_seconds, "max_memory_gb": max_memory_gb, "batch": 1},
              "rows": [asdict(r) for r in rows], "slopes": slopes(rows), "table": format_table(rows)}
    print("\n" + report["table"] + "\n\nlog-log slopes against length: " + json.dumps(report["slopes"]))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "ehr.json", json.dumps(report, indent=2))
        plot(rows, out_dir / "ehr.png")
        print(f"\nwrote {out_dir / 'ehr.json'} and {out_dir / 'ehr.png'}")
    return report
