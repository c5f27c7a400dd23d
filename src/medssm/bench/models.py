"""`medssm bench models`: CPU inference time, peak memory, parameters and FLOPs of the segmentation models
(or, with ``task="restoration"``, the restoration models) against input size, and optionally a 3D training
step.

For each (model, spatial_dims, size) it builds the registered model (1 input channel, 2 output channels; a
restoration model 1 output channel) in a fresh Python process and, on a batch of 1 in eval mode under
``torch.no_grad()``:

1. runs one forward as warm-up (kernel loading, lazy set-up); a warm-up that takes longer than
   ``max_seconds`` ends the case as skipped;
2. measures the **peak memory** of one forward: the growth of the process's resident-set high-water mark
   (Linux VmHWM, reset through /proc/self/clear_refs: :func:`medssm.bench.scan.peak_extra_memory`) during the
   call, so the input and the model's weights are excluded and the output and every intermediate are
   included. The fresh process keeps earlier cases' allocations out of it, and glibc's mmap threshold is set
   to 64 KiB from the start of the process (mallopt) so that every block of 64 KiB or more is mapped on its
   own and leaves the resident set when freed: the high-water mark then follows the live tensors;
3. switches malloc back to the setting of the process that runs the benchmark (medssm's, set by the
   ``medssm`` command, or a MALLOC_MMAP_THRESHOLD_ of yours; otherwise glibc's initial 128 KiB threshold)
   and times ``repeats`` forwards: the **median** wall time;
4. counts the forward's **FLOPs** with the registry's :func:`~medssm.models.count_flops`.

With ``train_sizes`` (``--train-step``) it also times one **training step** (forward, cross-entropy against
random labels, backward, AdamW step) at batch 2 for each 3D model, and measures its peak memory the same way
(the gradients included; AdamW's state, allocated by the warm-up step, excluded). With
``classifier_sizes`` (``--classifier-step``) it times the same step for the 3D classification models at
batch 8 against random class labels (64^3 by default: the 3D classifier of issue 26, item 9).

A case that fails (out of memory, any other error, a process killed or running past its time limit) is a
row with ``skipped`` set to the reason; larger sizes of the same model and mode are then skipped too when
the reason was memory or time. A size is also skipped, unrun, when the time or peak memory of the largest
smaller size that ran, extrapolated linearly in voxels, puts one call over ``max_seconds`` or the peak over
80% of the memory available (:func:`predicted_skip`).

For each (model, spatial_dims) the slopes of log(peak memory) and log(time) against log(voxels),
least-squares fits over the sizes that ran, say how each grows: a memory slope within 1 +- 0.15 is memory
linear in voxels. Results go to a printed markdown table, ``models.json`` and a log-log
plot ``models.png``.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import malloc_note, openmp_spin_note
from ..engine.files import atomic_path, write_text_atomic
from ..models import count_flops, count_parameters, create_model, get_entry, list_models
from .scan import memory_supported, peak_extra_memory

DEFAULT_SIZES = {2: (128, 256, 512, 1024), 3: (32, 64, 96, 128)}
RESTORATION_SIZES_2D = (256, 512, 1024, 2048)  # B-scans and fundus photographs are large: the default there
BENCH_TASKS = ("segmentation", "restoration")
TRAIN_SIDE = 64  # the training-step row runs at the smallest 3D size and at 64^3
IN_CHANNELS, OUT_CHANNELS = 1, 2
BATCH = {"forward": 1, "train_step": 2, "classifier_step": 8}
CLASSIFIER_SIDE = 64  # the 3D classifier's training-step row (issue 26, item 9: 64^3 at batch 8-16)
_MEMORY_MMAP_THRESHOLD = 1 << 16  # 64 KiB, as bench scan's memory children
_GLIBC_INITIAL_MMAP_THRESHOLD = 128 << 10
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
_RESULT_MARK = "MEDSSM-BENCH-MODELS "


@dataclass
class Case:
    """One measurement: a model variant, a cubic/square input side and a mode ("forward", "train_step" or
    "classifier_step")."""

    model: str
    spatial_dims: int
    side: int
    mode: str = "forward"

    @property
    def batch(self) -> int:
        return BATCH[self.mode]

    @property
    def voxels(self) -> int:
        return self.side ** self.spatial_dims


@dataclass
class Row(Case):
    """A case's results; ``skipped`` is the reason when it did not run (``skip_kind``: memory, time, error)."""

    params: int | None = None
    ms: float | None = None
    peak_mb: float | None = None
    gflops: float | None = None
    skipped: str | None = None
    skip_kind: str | None = None


class _TooSlow(Exception):
    pass


# ---------------------------------------------------------------- one case (run in a fresh process)


def _mallopt(threshold: int, trim: int | None = None) -> bool:
    """Set glibc's mmap (and trim) threshold in this process; False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
        return ok and (trim is None or bool(libc.mallopt(_M_TRIM_THRESHOLD, trim)))
    except (OSError, AttributeError):
        return False


def _restore_malloc(medssm_malloc: bool) -> None:
    """The timing's malloc: medssm's setting when the benchmarking process had it, else the user's
    MALLOC_MMAP_THRESHOLD_, else glibc's initial threshold (its adaptive raise is off after a mallopt)."""
    from ..runtime import keep_freed_memory

    if medssm_malloc:
        _mallopt(_GLIBC_INITIAL_MMAP_THRESHOLD)
        keep_freed_memory()
    else:
        _mallopt(int(os.environ.get("MALLOC_MMAP_THRESHOLD_", _GLIBC_INITIAL_MMAP_THRESHOLD)))


def _step_fn(case: Case) -> tuple[torch.nn.Module, Callable[[], None]]:
    """The model and the no-argument function that runs one forward (no grad) or one training step."""
    entry = get_entry(case.model)
    torch.manual_seed(0)
    restoration = entry.task == "restoration"
    model = create_model(case.model, **entry.model_kwargs(case.spatial_dims), in_channels=IN_CHANNELS,
                         out_channels=IN_CHANNELS if restoration else OUT_CHANNELS)
    size = (case.side,) * case.spatial_dims
    x = entry.example_input(case.spatial_dims, batch=case.batch, in_channels=IN_CHANNELS, size=size)
    if case.mode == "forward":
        model.eval()

        def forward() -> None:
            with torch.no_grad():
                model(x)

        return model, forward
    model.train()
    if restoration:
        target = torch.rand_like(x)
    else:
        target_shape = (case.batch,) if case.mode == "classifier_step" else (case.batch, *size)
        target = torch.randint(0, OUT_CHANNELS, target_shape)
    loss_fn = F.l1_loss if restoration else F.cross_entropy
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step() -> None:  # gradients freed at the end, so the measured step allocates its own
        loss_fn(model(x), target).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, train_step


def _timed(fn: Callable[[], None], max_seconds: float) -> float:
    """Wall time of one call of ``fn``; _TooSlow when it is over ``max_seconds``."""
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    if seconds > max_seconds:
        raise _TooSlow(f"one call took {seconds:.1f} s > --max-seconds {max_seconds:g}")
    return seconds


def measure_case(case: Case, repeats: int, max_seconds: float, fresh_process: bool = False,
                 medssm_malloc: bool = False) -> Row:
    """Measure one case in this process (see the module docstring for the steps); never raises for a
    failing model: the row says why it was skipped. ``fresh_process``: this process exists for this case
    (:func:`measure_in_subprocess`), so its malloc may be set for the memory measurement."""
    row = Row(case.model, case.spatial_dims, case.side, case.mode)
    memory = memory_supported() and fresh_process and _mallopt(_MEMORY_MMAP_THRESHOLD)
    try:
        model, fn = _step_fn(case)
        row.params = count_parameters(model)
        _timed(fn, max_seconds)  # warm-up
        if memory:
            row.peak_mb = peak_extra_memory(fn) / 2**20
            _restore_malloc(medssm_malloc)
        row.ms = 1e3 * statistics.median(_timed(fn, max_seconds) for _ in range(repeats))
        if case.mode == "forward":
            size = (case.side,) * case.spatial_dims
            example = get_entry(case.model).example_input(case.spatial_dims, batch=case.batch,
                                                          in_channels=IN_CHANNELS, size=size)
            row.gflops = count_flops(model, example) / 1e9
    except _TooSlow as error:
        row.skipped, row.skip_kind = str(error), "time"
    except Exception as error:  # noqa: BLE001  (a failing size is a row, never the end of the run)
        row.skipped, row.skip_kind = describe_failure(error)
    return row


def describe_failure(error: Exception) -> tuple[str, str]:
    """Why a measured point failed, for its row: (text, kind), kind "memory" for an allocation failure (a
    MemoryError or torch's "out of memory" / "can't allocate"), else "error"."""
    if isinstance(error, MemoryError):
        return f"out of memory (MemoryError{': ' + str(error) if str(error) else ''})", "memory"
    text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    out_of_memory = "out of memory" in text.lower() or "can't allocate" in text.lower()
    return text, "memory" if out_of_memory else "error"


def _child_main(spec: str) -> None:
    """Entry point of :func:`measure_in_subprocess`'s process: measure the case, print the row as JSON."""
    args = json.loads(spec)
    torch.set_num_threads(args["threads"])
    row = measure_case(Case(**args["case"]), args["repeats"], args["max_seconds"], fresh_process=True,
                       medssm_malloc=args["medssm_malloc"])
    print(_RESULT_MARK + json.dumps(asdict(row)), flush=True)


def measure_in_subprocess(case: Case, repeats: int, max_seconds: float, threads: int) -> Row:
    """:func:`measure_case` in a fresh Python process, killed when it runs past the time its calls may take
    (``(repeats + 3) * max_seconds`` plus a minute to start); a crash or a kill is a skipped row."""
    from ..runtime import _applied

    spec = json.dumps({"case": asdict(case), "repeats": repeats, "max_seconds": max_seconds, "threads": threads,
                       "medssm_malloc": _applied["malloc"]})
    code = "import sys; from medssm.bench.models import _child_main; _child_main(sys.argv[1])"
    limit = (repeats + 3) * max_seconds + 60
    row = Row(case.model, case.spatial_dims, case.side, case.mode)
    try:
        proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        row.skipped, row.skip_kind = f"killed after {limit:.0f} s (--max-seconds {max_seconds:g} per call)", "time"
        return row
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            return Row(**json.loads(line[len(_RESULT_MARK):]))
    if proc.returncode < 0:
        row.skipped = f"process killed by signal {-proc.returncode} (out of memory?)"
        row.skip_kind = "memory"
    else:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        row.skipped, row.skip_kind = f"process failed (exit {proc.returncode}): {tail}", "error"
    return row


# ---------------------------------------------------------------- the run


def plan_cases(models: list[str] | None = None, spatial_dims: list[int] | None = None,
               sizes: dict[int, tuple[int, ...]] | None = None,
               train_sizes: tuple[int, ...] = (), classifier_sizes: tuple[int, ...] = (),
               task: str = "segmentation") -> list[Case]:
    """The cases in run order: per model and dims, the forward sizes ascending, then the 3D training steps;
    with ``classifier_sizes``, a 3D classification model's training step at batch 8 for each side.
    ``models`` default: every registered model of ``task`` (segmentation or restoration; and with
    ``classifier_sizes`` every 3D classification model); ``spatial_dims`` default (2, 3), each where the model
    supports it."""
    if task not in BENCH_TASKS:
        raise ValueError(f"task must be one of {BENCH_TASKS}, got {task!r}")
    sizes = sizes or DEFAULT_SIZES
    names = models or list_models(task=task) + (list_models(task="classification") if classifier_sizes else [])
    cases = []
    for name in names:
        entry = get_entry(name)
        if entry.task == "classification" and classifier_sizes:
            if 3 in entry.variants:
                cases += [Case(name, 3, side, "classifier_step") for side in sorted(set(classifier_sizes))]
            continue
        if entry.task != task:
            raise ValueError(f"bench models --task {task} measures {task} models; {name!r} is a {entry.task} "
                             f"model (3D classification models: --classifier-step)")
        variants = entry.variants
        for dims in spatial_dims or (2, 3):
            if dims in variants:
                cases += [Case(name, dims, side) for side in sorted(set(sizes[dims]))]
        if 3 in variants:
            cases += [Case(name, 3, side, "train_step") for side in sorted(set(train_sizes))]
    return cases


def measure_all(cases: list[Case], repeats: int, max_seconds: float, threads: int,
                isolate: bool = True) -> list[Row]:
    """Measure each case (each in a fresh process when ``isolate``), printing one line per case; once a
    size is skipped for memory or time, the larger sizes of that model, dims and mode are skipped too."""
    rows: list[Row] = []
    stopped: dict[tuple, Row] = {}
    last: dict[tuple, Row] = {}  # the largest size that ran, per model, dims and mode
    memory_mb = available_memory_mb()
    for case in cases:
        key = (case.model, case.spatial_dims, case.mode)
        predicted = predicted_skip(case, last.get(key), max_seconds, memory_mb)
        if key in stopped:
            first = stopped[key]
            row = Row(case.model, case.spatial_dims, case.side, case.mode, params=first.params,
                      skipped=f"a smaller size ({_size_text(first)}) was skipped: {first.skipped}",
                      skip_kind=first.skip_kind)
        elif predicted is not None:
            row = Row(case.model, case.spatial_dims, case.side, case.mode, params=last[key].params,
                      skipped=predicted[0], skip_kind=predicted[1])
        elif isolate:
            row = measure_in_subprocess(case, repeats, max_seconds, threads)
        else:
            row = measure_case(case, repeats, max_seconds)
        if row.skip_kind in ("memory", "time") and key not in stopped:
            stopped[key] = row
        if row.skipped is None:
            last[key] = row
        rows.append(row)
        done = (f"{row.ms:.1f} ms, peak {_cell(row.peak_mb, '.1f')} MB" if row.skipped is None
                else f"skipped: {row.skipped}")
        print(f"  {case.model} {case.spatial_dims}D {case.mode} {_size_text(row)}: {done}", flush=True)
    return rows


def available_memory_mb() -> float | None:
    """The memory a new process may still take (Linux MemAvailable), in MB; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def predicted_skip(case: Case, previous: Row | None, max_seconds: float,
                   memory_mb: float | None) -> tuple[str, str] | None:
    """Why ``case`` is not run, from the largest smaller size that ran (``previous``), or None to run it.

    Time and peak memory are extrapolated linearly in voxels, a lower bound for every model here (none is
    sub-linear), so a case is only skipped when even that bound is out of reach: one call over
    ``max_seconds``, or a peak over 80% of the memory available when the run started."""
    if previous is None or previous.ms is None:
        return None
    ratio = case.voxels / previous.voxels
    seconds = previous.ms / 1e3 * ratio
    if seconds > max_seconds:
        return (f"predicted {seconds:.0f} s per call (linear from {_size_text(previous)}) > --max-seconds "
                f"{max_seconds:g}", "time")
    return predicted_memory_skip(previous.peak_mb, ratio, memory_mb, _size_text(previous))


def predicted_memory_skip(peak_mb: float | None, ratio: float, memory_mb: float | None,
                          source: str) -> tuple[str, str] | None:
    """The memory reason to skip a size ``ratio`` times one whose peak was ``peak_mb`` (measured at ``source``):
    the peak extrapolated linearly over 80% of ``memory_mb`` available, or None. Shared by ``bench mil``."""
    if memory_mb is None or peak_mb is None or peak_mb * ratio <= 0.8 * memory_mb:
        return None
    return (f"predicted peak {peak_mb * ratio / 1024:.1f} GB (linear from {source}) > 80% of the "
            f"{memory_mb / 1024:.1f} GB available", "memory")


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) against log(x) over the points with x, y > 0; None with fewer than two
    distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x and y and x > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)


def fit_slopes(rows: list[Row]) -> list[dict]:
    """Per (model, dims, mode): the log-log slopes of peak memory and time against voxels, over the sizes
    that ran; ``memory_linear`` when the memory slope is within 1 +- 0.15."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.skipped is None:
            groups.setdefault((r.model, r.spatial_dims, r.mode), []).append(r)
    fits = []
    for (model, dims, mode), group in groups.items():
        voxels = [r.voxels for r in group]
        memory = loglog_slope(voxels, [r.peak_mb for r in group])
        fits.append({"model": model, "spatial_dims": dims, "mode": mode, "sizes": [r.side for r in group],
                     "memory_slope": memory, "time_slope": loglog_slope(voxels, [r.ms for r in group]),
                     "memory_linear": None if memory is None else abs(memory - 1) <= 0.15})
    return fits


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _size_text(row: Case) -> str:
    return "x".join([str(row.side)] * row.spatial_dims)


def format_table(rows: list[Row]) -> str:
    """Markdown table: model, dims, mode, params, size, ms, peak MB, GFLOPs (a skipped row gives its reason)."""
    lines = ["| model | dims | mode (batch) | params | size | ms | peak MB | GFLOPs |",
             "|---|---|---|--:|---|--:|--:|--:|"]
    for r in rows:
        timing = _cell(r.ms, ".1f") if r.skipped is None else f"skipped: {r.skipped.replace('|', '/')}"
        params = "-" if r.params is None else f"{r.params:,}"
        lines.append(f"| {r.model} | {r.spatial_dims}D | {r.mode} ({r.batch}) | {params} | {_size_text(r)} | "
                     f"{timing} | {_cell(r.peak_mb, '.1f')} | {_cell(r.gflops, '.2f')} |")
    return "\n".join(lines)


def format_slopes(fits: list[dict]) -> str:
    """Markdown table of :func:`fit_slopes`."""
    lines = ["| model | dims | mode | sizes | memory slope (log MB / log voxels) | linear (1 +- 0.15) | time slope |",
             "|---|---|---|---|--:|---|--:|"]
    for f in fits:
        linear = "-" if f["memory_linear"] is None else ("yes" if f["memory_linear"] else "no")
        lines.append(f"| {f['model']} | {f['spatial_dims']}D | {f['mode']} | {','.join(map(str, f['sizes']))} | "
                     f"{_cell(f['memory_slope'], '.2f')} | {linear} | {_cell(f['time_slope'], '.2f')} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    """Log-log plot of forward time and peak memory against voxels, one line per model and dims."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    names = list(dict.fromkeys(r.model for r in rows))
    colors = {name: plt.get_cmap("tab20")(i % 20) for i, name in enumerate(names)}
    for (ax, attr, label) in ((axes[0], "ms", "forward time (ms)"), (axes[1], "peak_mb", "peak memory (MB)")):
        for name in names:
            for dims, style in ((2, "o-"), (3, "s--")):
                pts = [(r.voxels, getattr(r, attr)) for r in rows if r.model == name and r.spatial_dims == dims
                       and r.mode == "forward" and r.skipped is None and getattr(r, attr)]
                if pts:
                    ax.loglog(*zip(*sorted(pts), strict=True), style, color=colors[name], label=f"{name} {dims}D")
        ax.set_xlabel("voxels (batch 1)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title("CPU inference time")
    axes[1].set_title("peak memory of one forward")
    if axes[0].lines:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def run(models: list[str] | None = None, spatial_dims: list[int] | None = None,
        sizes: dict[int, tuple[int, ...]] | None = None, repeats: int = 3, max_seconds: float = 60.0,
        train_sizes: tuple[int, ...] = (), threads: int | None = None, out_dir: Path | None = None,
        isolate: bool = True, classifier_sizes: tuple[int, ...] = (), task: str = "segmentation") -> dict:
    """Run the benchmark (see the module docstring), print the tables, write models.json and models.png
    under ``out_dir``; ``isolate=False`` measures in this process (no memory figures: tests, debugging)."""
    threads = threads or torch.get_num_threads()
    if not isolate:  # the children set their own; this process only runs them
        torch.set_num_threads(threads)
    sizes = sizes or DEFAULT_SIZES
    cases = plan_cases(models, spatial_dims, sizes, train_sizes, classifier_sizes=classifier_sizes, task=task)
    if not cases:
        raise ValueError(f"no case to run: models {models or 'all ' + task} at spatial_dims {spatial_dims}")
    machine = {"processor": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
               "torch": torch.__version__, "python": platform.python_version(), "openmp": openmp_spin_note(),
               "malloc": malloc_note()}
    print(f"medssm bench models: {machine['processor']}, {machine['cores']} cores, torch {machine['torch']}, "
          f"{threads} threads, {machine['openmp']}; {machine['malloc']}; {len(cases)} cases, {repeats} repeats, "
          f"--max-seconds {max_seconds:g}", flush=True)
    rows = measure_all(cases, repeats, max_seconds, threads, isolate=isolate)
    fits = fit_slopes(rows)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine,
        "settings": {"task": task, "repeats": repeats, "max_seconds": max_seconds, "in_channels": IN_CHANNELS,
                     "out_channels": OUT_CHANNELS, "batch": BATCH, "sizes": {str(k): list(v) for k, v in sizes.items()},
                     "train_sizes": list(train_sizes), "classifier_sizes": list(classifier_sizes),
                     "isolated": isolate},
        "rows": [asdict(r) | {"batch": r.batch, "voxels": r.voxels} for r in rows],
        "slopes": fits,
        "table": format_table(rows),
        "slopes_table": format_slopes(fits),
    }
    print("\n" + report["table"] + "\n\n" + report["slopes_table"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "models.json", json.dumps(report, indent=2))
        plot(rows, out_dir / "models.png")
        print(f"\nwrote {out_dir / 'models.json'} and {out_dir / 'models.png'}")
    return report
