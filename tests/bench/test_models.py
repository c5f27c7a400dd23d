"""`medssm bench models` at tiny sizes: the CLI, the JSON and the plot, skipped sizes, the slope fit."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import torch

from medssm.bench import models as bench
from medssm.cli import build_parser, main


def test_cli_parses():
    args = build_parser().parse_args(["bench", "models", "--model", "unet", "--model", "segresnet", "--spatial-dims",
                                      "3", "--sizes-2d", "32,64", "--sizes-3d", "16", "--train-step", "--repeats", "2",
                                      "--max-seconds", "5"])
    assert args.model == ["unet", "segresnet"] and args.spatial_dims == [3]
    assert args.sizes_2d == [32, 64] and args.sizes_3d == [16] and args.train_step and args.max_seconds == 5.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "models", "--sizes-2d", "0,x"])


def test_plan_defaults_and_train_rows():
    cases = bench.plan_cases(["segresnet"], None, bench.DEFAULT_SIZES, train_sizes=(32, 64))
    forward = [(c.spatial_dims, c.side) for c in cases if c.mode == "forward"]
    assert forward == [(2, 128), (2, 256), (2, 512), (2, 1024), (3, 32), (3, 64), (3, 96), (3, 128)]
    assert [(c.side, c.batch) for c in cases if c.mode == "train_step"] == [(32, 2), (64, 2)]
    every = {c.model for c in bench.plan_cases(None, [2])}
    assert every == set(bench.list_models(task="segmentation"))
    with pytest.raises(ValueError, match="segmentation"):
        bench.plan_cases([bench.list_models(task="classification")[0]])


def test_cli_writes_json_and_plot(tmp_path, capsys):
    """The real path: the size in a fresh process, with its peak memory."""
    out = tmp_path / "bench"
    code = main(["bench", "models", "--model", "segresnet", "--spatial-dims", "2", "--sizes-2d", "64",
                 "--repeats", "1", "--threads", "1", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "models.json").read_text())
    assert {"date", "machine", "settings", "rows", "slopes", "table", "slopes_table"} <= set(report)
    assert {"cores", "threads", "torch", "openmp", "malloc"} <= set(report["machine"])
    (row,) = report["rows"]
    assert {"model", "spatial_dims", "mode", "batch", "voxels", "params", "ms", "peak_mb", "gflops",
            "skipped"} <= set(row)
    assert row["skipped"] is None and row["ms"] > 0 and row["gflops"] > 0 and row["params"] > 0
    assert row["peak_mb"] > 0  # 8 channels x 64 x 64 fp32 = 128 KiB per feature map: mmapped, counted
    assert row["voxels"] == 64 * 64 and row["batch"] == 1
    assert (out / "models.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert printed.startswith("medssm bench models: ") and "cores" in printed and "torch" in printed
    assert "| segresnet | 2D | forward (1) | " in printed and "memory slope" in printed


@pytest.fixture
def one_thread():
    """One torch thread (small 3D convs on two threads are slow on a busy 2-core machine), restored after."""
    threads = torch.get_num_threads()
    yield 1
    torch.set_num_threads(threads)


def test_train_step_and_slopes_in_process(tmp_path, one_thread):
    report = bench.run(models=["segresnet"], spatial_dims=[3], sizes={2: (8,), 3: (8, 16)}, repeats=1,
                       train_sizes=(8,), threads=one_thread, out_dir=tmp_path, isolate=False)
    rows = {(r["mode"], r["batch"], r["side"]): r for r in report["rows"]}
    assert set(rows) == {("forward", 1, 8), ("forward", 1, 16), ("train_step", 2, 8)}
    train = rows[("train_step", 2, 8)]
    assert train["skipped"] is None and train["ms"] > 0 and train["gflops"] is None
    forward = next(f for f in report["slopes"] if f["mode"] == "forward")
    assert forward["sizes"] == [8, 16] and forward["time_slope"] is not None
    assert forward["memory_slope"] is None  # no memory figures outside a fresh process
    assert json.loads((tmp_path / "models.json").read_text())["slopes"] == report["slopes"]
    assert (tmp_path / "models.png").is_file()


def test_classifier_step_row(tmp_path, one_thread):
    # issue 26, item 9: a 3D classifier's training step (64^3, batch 8 by default; 16^3 here)
    args = build_parser().parse_args(["bench", "models", "--classifier-step", "--classifier-sizes", "8,16"])
    assert args.classifier_step and args.classifier_sizes == [8, 16]
    classifier = "mini_mamba_classifier"
    cases = bench.plan_cases([classifier], None, classifier_sizes=(bench.CLASSIFIER_SIDE,))
    assert [(c.mode, c.spatial_dims, c.side, c.batch) for c in cases] == [("classifier_step", 3, 64, 8)]
    assert any(c.model == classifier for c in bench.plan_cases(None, [3], classifier_sizes=(64,)))
    report = bench.run(models=[classifier], spatial_dims=[3], repeats=1, threads=one_thread,
                       classifier_sizes=(16,), isolate=False)
    (row,) = report["rows"]
    assert (row["mode"], row["batch"], row["side"]) == ("classifier_step", 8, 16)
    assert row["skipped"] is None and row["ms"] > 0 and row["params"] > 0
    assert f"| {classifier} | 3D | classifier_step (8) | " in report["table"]


class _FailsFrom(torch.nn.Module):
    """A model whose forward raises MemoryError from a given side on."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 1)
        self.side = side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] >= self.side:
            raise MemoryError("simulated")
        return self.conv(x)


def test_skipped_size_is_recorded(monkeypatch, one_thread):
    monkeypatch.setattr(bench, "create_model", lambda name, **kwargs: _FailsFrom(16))
    rows = bench.measure_all(bench.plan_cases(["segresnet"], [2], {2: (8, 16, 32), 3: ()}), repeats=1,
                             max_seconds=60, threads=one_thread, isolate=False)
    assert [r.skipped is None for r in rows] == [True, False, False]
    assert rows[1].skip_kind == "memory" and "MemoryError: simulated" in rows[1].skipped
    assert rows[2].skip_kind == "memory" and rows[2].skipped.startswith("a smaller size (16x16) was skipped")
    assert "skipped: out of memory" in bench.format_table(rows)


def test_slow_call_and_killed_process_are_skipped(monkeypatch):
    row = bench.measure_case(bench.Case("segresnet", 2, 16), repeats=1, max_seconds=0.0)
    assert row.skip_kind == "time" and "--max-seconds 0" in row.skipped and row.params > 0

    def timeout(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(bench.subprocess, "run", timeout)
    row = bench.measure_in_subprocess(bench.Case("segresnet", 2, 16), repeats=1, max_seconds=1, threads=1)
    assert row.skip_kind == "time" and row.skipped.startswith("killed after 64 s")


def test_sizes_out_of_reach_by_linear_extrapolation_are_skipped_unrun():
    previous = bench.Row("unet", 2, 256, ms=2_000.0, peak_mb=100.0, params=10)
    at_512, at_2048 = bench.Case("unet", 2, 512), bench.Case("unet", 2, 2048)
    assert bench.predicted_skip(at_512, previous, max_seconds=60, memory_mb=10_000) is None
    reason, kind = bench.predicted_skip(at_2048, previous, max_seconds=60, memory_mb=100_000)
    assert kind == "time" and reason.startswith("predicted 128 s per call (linear from 256x256) > --max-seconds 60")
    reason, kind = bench.predicted_skip(at_2048, previous, max_seconds=600, memory_mb=6_000)
    assert kind == "memory" and "predicted peak 6.2 GB" in reason and "80% of the 5.9 GB available" in reason
    assert bench.predicted_skip(at_2048, None, 60, 1.0) is None
    assert bench.available_memory_mb() is None or bench.available_memory_mb() > 0


def test_a_predicted_skip_is_a_row_and_stops_the_larger_sizes(monkeypatch):
    measured = bench.Row("segresnet", 2, 8, params=5, ms=30_000.0, peak_mb=1.0)
    monkeypatch.setattr(bench, "measure_case", lambda case, *a, **k: measured)
    rows = bench.measure_all(bench.plan_cases(["segresnet"], [2], {2: (8, 16, 32), 3: ()}), repeats=1,
                             max_seconds=60, threads=1, isolate=False)
    assert rows[0] is measured and rows[1].skip_kind == "time" and rows[1].params == 5
    assert rows[1].skipped.startswith("predicted 120 s per call (linear from 8x8)")
    assert rows[2].skipped.startswith("a smaller size (16x16) was skipped: predicted 120 s")


def test_loglog_slope():
    xs = [10.0, 100.0, 1000.0, 10000.0]
    assert bench.loglog_slope(xs, [3 * x**1.2 for x in xs]) == pytest.approx(1.2)
    noisy = [2 * x * f for x, f in zip(xs, (1.1, 0.9, 1.1, 0.9), strict=True)]
    logs = [math.log(x) for x in xs]
    mean = sum(logs) / 4
    expected = 1 + sum((lx - mean) * math.log(f) for lx, f in zip(logs, (1.1, 0.9, 1.1, 0.9), strict=True)) / sum(
        (lx - mean) ** 2 for lx in logs)
    assert bench.loglog_slope(xs, noisy) == pytest.approx(expected)
    assert bench.loglog_slope([10.0], [1.0]) is None
    assert bench.loglog_slope([10.0, 100.0], [1.0, None]) is None  # a point without memory is left out
    rows = [bench.Row("m", 3, side, ms=float(side), peak_mb=0.5 * side**3) for side in (16, 32, 64)]
    rows.append(bench.Row("m", 3, 128, skipped="out of memory", skip_kind="memory"))
    (fit,) = bench.fit_slopes(rows)
    assert fit["memory_slope"] == pytest.approx(1.0) and fit["memory_linear"] is True
    assert fit["time_slope"] == pytest.approx(1 / 3) and fit["sizes"] == [16, 32, 64]


def test_refuses_non_empty_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "models.json").write_text("{}")
    assert main(["bench", "models", "--model", "segresnet", "--sizes-2d", "8", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "models.json").read_text() == "{}"


def test_restoration_models(tmp_path, one_thread):
    args = build_parser().parse_args(["bench", "models", "--task", "restoration", "--model", "mambair"])
    assert args.task == "restoration" and args.model == ["mambair"]
    planned = bench.plan_cases(None, [2], {2: bench.RESTORATION_SIZES_2D, 3: ()}, task="restoration")
    assert {c.model for c in planned} == set(bench.list_models(task="restoration")) >= {"mambair", "mair", "dncnn"}
    assert sorted({c.side for c in planned}) == [256, 512, 1024, 2048]
    report = bench.run(models=["dncnn"], spatial_dims=[3], sizes={2: (8,), 3: (6,)}, repeats=1, train_sizes=(6,),
                       threads=one_thread, out_dir=tmp_path, isolate=False, task="restoration")
    assert [(r["mode"], r["skipped"]) for r in report["rows"]] == [("forward", None), ("train_step", None)]
    assert report["settings"]["task"] == "restoration"
    with pytest.raises(ValueError, match="measures restoration models; 'unet' is a segmentation model"):
        bench.plan_cases(["unet"], task="restoration")
