"""`medssm bench mil`: time and peak memory of one forward+backward of each MIL model against bag size.

For each (variant, n) it builds the model on 512-wide features (2 classes) in a fresh Python process and, on
one bag (1, n, 512) in training mode:

1. runs one forward + cross-entropy + backward as warm-up (kernel compilation, lazy set-up);
2. measures the **peak memory** of one forward+backward: the growth of the process's resident-set high-water
   mark (Linux VmHWM reset through /proc/self/clear_refs, :func:`medssm.bench.scan.peak_extra_memory`), with
   glibc's mmap threshold at 64 KiB so that freed blocks leave the resident set (as ``bench models`` does):
   the input bag and the weights are excluded, activations, gradients and every temporary included;
3. times ``repeats`` forward+backward calls: the **median** wall time, under the malloc setting the calling
   process had (the ``medssm`` command's: glibc keeps freed memory in its heap and never returns it), and
   the **resident** memory those calls needed: the growth of the resident set's high-water mark over the
   resident set after the warm-up (so weights, bag and one-off loads excluded, as for the peak). With the
   ``medssm`` command's setting this is what a training process holds; freed blocks that later requests do
   not fit leave it well above the peak (about 1.9x for mamba_mil at 20k instances).

Variants: ``abmil``, ``transmil`` (Nystrom attention, the paper's), ``transmil_exact`` (exact softmax
attention: quadratic time), ``mamba_mil``, ``mamba_mil_nossm`` (``ssm=False``) and ``mamba_mil_ckpt``
(``checkpoint=True``: each SR-Mamba layer's activations recomputed in the backward). A size is skipped, with the
reason in its row, when a smaller size of the variant failed for memory or time, when the smaller size's time
extrapolated (linearly, quadratically for ``transmil_exact``) passes ``max_seconds``, when its peak or resident
memory (the larger) extrapolated linearly passes 80% of the memory available at the start, or when a process dies
or runs past its time limit. Per variant, the slopes of log(peak memory) and log(time) against log(n) say how
each grows (1: linear). Results: a printed markdown table, ``mil.json`` and a log-log plot ``mil.png``.
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
import torch.nn.functional as F

from .. import malloc_note, openmp_spin_note
from ..engine.files import atomic_path, write_text_atomic
from ..models import count_parameters, create_model
from .models import (
    _MEMORY_MMAP_THRESHOLD,
    _mallopt,
    _restore_malloc,
    available_memory_mb,
    describe_failure,
    loglog_slope,
    predicted_memory_skip,
)
from .scan import memory_supported, peak_extra_memory, rss_bytes

DEFAULT_SIZES = (1_000, 10_000, 100_000)
FEATURES, CLASSES = 512, 2
VARIANTS: dict[str, tuple[str, dict]] = {
    "abmil": ("abmil", {}),
    "transmil": ("transmil", {}),
    "transmil_exact": ("transmil", {"attention": "exact"}),
    "mamba_mil": ("mamba_mil", {}),
    "mamba_mil_nossm": ("mamba_mil", {"ssm": False}),
    "mamba_mil_ckpt": ("mamba_mil", {"checkpoint": True}),
}
TIME_EXPONENT = {"transmil_exact": 2}  # how the time of a variant grows with n, for the skip rule (default 1)
_RESULT_MARK = "MEDSSM-BENCH-MIL "


@dataclass
class Row:
    """One (variant, bag size) measurement; ``skipped`` is the reason when it did not run."""

    variant: str
    n: int
    params: int | None = None
    ms: float | None = None
    peak_mb: float | None = None
    resident_mb: float | None = None  # high-water of the timed calls (see the module docstring)
    skipped: str | None = None
    skip_kind: str | None = None  # memory | time | error


def measure_point(variant: str, n: int, repeats: int, fresh_process: bool = False,
                  medssm_malloc: bool = False) -> Row:
    """Measure one (variant, n) in this process (see the module docstring); a failure is a skipped row."""
    row = Row(variant, n)
    memory = memory_supported() and fresh_process and _mallopt(_MEMORY_MMAP_THRESHOLD)
    try:
        name, kwargs = VARIANTS[variant]
        torch.manual_seed(0)
        model = create_model(name, in_channels=FEATURES, out_channels=CLASSES, **kwargs).train()
        row.params = count_parameters(model)
        bag, target = torch.randn(1, n, FEATURES), torch.tensor([1])

        def step() -> None:
            F.cross_entropy(model(bag), target).backward()
            model.zero_grad(set_to_none=True)

        step()  # warm-up
        base = rss_bytes("VmRSS") if memory else 0  # after the warm-up's one-off loads, as the peak's
        if memory:
            row.peak_mb = peak_extra_memory(step) / 2**20
            _restore_malloc(medssm_malloc)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM: the timed calls' own high-water
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        row.ms = 1e3 * statistics.median(times)
        if memory:
            row.resident_mb = max(0, rss_bytes("VmHWM") - base) / 2**20
    except Exception as error:  # noqa: BLE001  (a failing size is a row, never the end of the run)
        row.skipped, row.skip_kind = describe_failure(error)
    return row


def _child_main(spec: str) -> None:
    """Entry point of :func:`measure_in_subprocess`'s process: measure, print the row as JSON."""
    args = json.loads(spec)
    torch.set_num_threads(args["threads"])
    row = measure_point(args["variant"], args["n"], args["repeats"], fresh_process=True,
                        medssm_malloc=args["medssm_malloc"])
    print(_RESULT_MARK + json.dumps(asdict(row)), flush=True)


def measure_in_subprocess(variant: str, n: int, repeats: int, threads: int, limit: float) -> Row:
    """:func:`measure_point` in a fresh Python process killed after ``limit`` seconds; a kill is a row."""
    from ..runtime import _applied

    spec = json.dumps({"variant": variant, "n": n, "repeats": repeats, "threads": threads,
                       "medssm_malloc": _applied["malloc"]})
    code = "import sys; from medssm.bench.mil import _child_main; _child_main(sys.argv[1])"
    row = Row(variant, n)
    try:
        proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        row.skipped, row.skip_kind = f"killed after {limit:.0f} s", "time"
        return row
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return Row(**json.loads(line[len(_RESULT_MARK):]))
    if proc.returncode < 0:
        row.skipped, row.skip_kind = f"process killed by signal {-proc.returncode} (out of memory?)", "memory"
    else:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        row.skipped, row.skip_kind = f"process failed (exit {proc.returncode}): {tail}", "error"
    return row


def _skip_reason(variant: str, n: int, previous: Row | None, max_seconds: float,
                 memory_mb: float | None = None) -> tuple[str, str] | None:
    """Why (variant, n) is not run, given the variant's previous (smaller) row; None to run it. With
    ``memory_mb`` (what the machine has available), a peak extrapolated linearly from the previous size over
    80% of it is a reason too: the kernel's out-of-memory killer may otherwise pick another process."""
    if previous is None:
        return None
    if previous.skipped is not None:
        if previous.skip_kind in ("memory", "time"):
            return f"n={previous.n} was skipped: {previous.skipped}", previous.skip_kind
        return None
    exponent = TIME_EXPONENT.get(variant, 1)
    predicted = previous.ms / 1e3 * (n / previous.n) ** exponent
    if predicted > max_seconds:
        growth = "quadratic" if exponent == 2 else "linear"
        return (f"predicted {predicted:.0f} s per call ({growth} from n={previous.n}) > --max-seconds "
                f"{max_seconds:g}", "time")
    measured = [m for m in (previous.peak_mb, previous.resident_mb) if m is not None]
    return predicted_memory_skip(max(measured, default=None), n / previous.n, memory_mb, f"n={previous.n}")


def measure_all(variants: list[str], sizes: list[int], repeats: int, threads: int, max_seconds: float,
                isolate: bool = True) -> list[Row]:
    """Every variant at every size (ascending), one line printed per point."""
    rows = []
    memory_mb = available_memory_mb()
    for variant in variants:
        previous = None
        for n in sorted(set(sizes)):
            reason = _skip_reason(variant, n, previous, max_seconds, memory_mb)
            if reason is not None:
                row = Row(variant, n, previous.params if previous else None, skipped=reason[0], skip_kind=reason[1])
            elif isolate:
                row = measure_in_subprocess(variant, n, repeats, threads, (repeats + 2) * max_seconds + 120)
            else:
                row = measure_point(variant, n, repeats)
            rows.append(row)
            previous = row
            done = (f"{row.ms:.1f} ms, peak {_cell(row.peak_mb, '.0f')} MB, resident {_cell(row.resident_mb, '.0f')} MB"
                    if row.skipped is None else row.skipped)
            print(f"  {variant} n={n}: {done}", flush=True)
    return rows


def fit_slopes(rows: list[Row]) -> list[dict]:
    """Per variant: log-log slopes of peak memory and time against n over the sizes that ran."""
    fits = []
    for variant in dict.fromkeys(r.variant for r in rows):
        ran = [r for r in rows if r.variant == variant and r.skipped is None]
        ns = [r.n for r in ran]
        fits.append({"variant": variant, "sizes": ns, "memory_slope": loglog_slope(ns, [r.peak_mb for r in ran]),
                     "time_slope": loglog_slope(ns, [r.ms for r in ran])})
    return fits


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[Row], fits: list[dict]) -> str:
    """Markdown: one row per variant and size, then the slopes per variant."""
    lines = ["| model | params | instances | forward+backward (ms) | peak memory (MB) | resident (MB) |",
             "|---|--:|--:|--:|--:|--:|"]
    for r in rows:
        timing = _cell(r.ms, ".1f") if r.skipped is None else f"skipped: {r.skipped.replace('|', '/')}"
        params = "-" if r.params is None else f"{r.params:,}"
        lines.append(f"| {r.variant} | {params} | {r.n:,} | {timing} | {_cell(r.peak_mb, '.0f')} | "
                     f"{_cell(r.resident_mb, '.0f')} |")
    lines += ["", "| model | sizes | memory slope (log MB / log n) | time slope |", "|---|---|--:|--:|"]
    for f in fits:
        lines.append(f"| {f['variant']} | {','.join(map(str, f['sizes']))} | {_cell(f['memory_slope'], '.2f')} | "
                     f"{_cell(f['time_slope'], '.2f')} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    """Log-log time and peak memory against bag size, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, attr, label in ((axes[0], "ms", "forward+backward (ms)"), (axes[1], "peak_mb", "peak memory (MB)")):
        for variant in dict.fromkeys(r.variant for r in rows):
            pts = sorted((r.n, getattr(r, attr)) for r in rows
                         if r.variant == variant and r.skipped is None and getattr(r, attr))
            if pts:
                ax.loglog(*zip(*pts, strict=True), "o-", label=variant)
        ax.set_xlabel(f"instances per bag ({FEATURES}-d features)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def run(variants: list[str] | None = None, sizes: list[int] | None = None, repeats: int = 3,
        threads: int | None = None, max_seconds: float = 120.0, out_dir: Path | None = None,
        isolate: bool = True) -> dict:
    """Run the benchmark, print the table, write mil.json and mil.png under ``out_dir``; ``isolate=False``
    measures in this process (no memory figures: tests, debugging)."""
    variants = variants or list(VARIANTS)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown bench mil model(s) {unknown}; choose among {list(VARIANTS)}")
    sizes = list(sizes or DEFAULT_SIZES)
    threads = threads or torch.get_num_threads()
    if not isolate:
        torch.set_num_threads(threads)
    machine = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
               "torch": torch.__version__, "openmp": openmp_spin_note(), "malloc": malloc_note()}
    print(f"medssm bench mil: {machine['processor']}, {machine['cores']} cores, {threads} threads, torch "
          f"{machine['torch']}; sizes {sizes}, {repeats} repeats, --max-seconds {max_seconds:g}", flush=True)
    rows = measure_all(variants, sizes, repeats, threads, max_seconds, isolate)
    fits = fit_slopes(rows)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine,
              "settings": {"features": FEATURES, "classes": CLASSES, "repeats": repeats, "max_seconds": max_seconds,
                           "isolated": isolate},
              "rows": [asdict(r) for r in rows], "slopes": fits, "table": format_table(rows, fits)}
    print("\n" + report["table"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "mil.json", json.dumps(report, indent=2))
        plot(rows, out_dir / "mil.png")
        print(f"\nwrote {out_dir / 'mil.json'} and {out_dir / 'mil.png'}")
    return report
