"""The training loop end to end on small generated data: run folder contents, mixed precision, early
stopping, exact resumption after SIGKILL, and DDP with two CPU processes against one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from medssm.engine.config import config_from_dict
from medssm.engine.trainer import lr_factor, train

SMALL = {
    "model": {"name": "mini_mamba_unet", "args": {"features": [8, 16, 32], "mamba_stages": 1}},
    "data": {"name": "synthetic", "args": {"num_samples": 24, "spatial_size": [32, 32], "seed": 0}},
    "transforms": {"patch_size": [24, 24]},
    "train": {"max_steps": 6, "batch_size": 4, "lr": 2e-3, "warmup_steps": 2, "val_every": 3,
              "checkpoint_every": 2, "log_every": 1},
}


def _config(**train):
    raw = json.loads(json.dumps(SMALL))
    raw["train"].update(train)
    return raw


def _read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "medssm", *args]


def test_a_short_run_writes_the_run_folder(tmp_path):
    run = tmp_path / "run"
    summary = train(config_from_dict(_config()), run, progress=False)
    assert summary["step"] == 6 and summary["best_metric"] == "dice" and 0 <= summary["best"] <= 1
    for name in ("config.yaml", "log.jsonl", "curves.png", "val_metrics.json", "checkpoints/last/model.safetensors",
                 "checkpoints/last/train_state.safetensors", "checkpoints/best/checkpoint.json"):
        assert (run / name).is_file(), name
    rows = _read_log(run)
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "val_dice" in r] == [3, 6]
    meta = json.loads((run / "checkpoints/best/checkpoint.json").read_text())
    assert meta["model_args"]["spatial_dims"] == 2 and meta["task"] == "segmentation"
    assert meta["data"]["train_size"] == 24 and meta["config"]["train"]["seed"] == 0
    with pytest.raises(FileExistsError, match="--resume .* or --overwrite"):
        train(config_from_dict(_config()), run, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="does not look like a medssm run"):
        train(config_from_dict(_config()), tmp_path / "other", overwrite=True, progress=False)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_without_nan(amp, tmp_path):
    summary = train(config_from_dict(_config(amp=amp, max_steps=4, val_every=4)), tmp_path / amp, progress=False)
    losses = [r["train_loss"] for r in _read_log(tmp_path / amp) if "train_loss" in r]
    assert all(torch.isfinite(torch.tensor(losses))) and summary["val_metrics"]["dice"] >= 0


def test_early_stopping_stops_after_patience(tmp_path):
    # lr 0: the score never improves after the first validation, so patience 2 stops at the third.
    summary = train(config_from_dict(_config(lr=0.0, max_steps=40, val_every=2, early_stopping=2)),
                    tmp_path / "r", progress=False)
    assert summary["step"] == 6 and summary["best_step"] == 2


def test_learning_rate_schedule():
    assert lr_factor(0, 4, 100, 0.1) == 0.25 and lr_factor(3, 4, 100, 0.1) == 1.0
    assert lr_factor(4, 4, 100, 0.1) == pytest.approx(1.0) and lr_factor(100, 4, 100, 0.1) == pytest.approx(0.1)
    assert lr_factor(52, 4, 100, 0.1) == pytest.approx(0.55)


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_sigkill_in_the_middle_of_an_epoch_then_resume_gives_the_uninterrupted_result(tmp_path):
    # 24 samples / batch 4 = 6 steps per epoch; checkpoints every 4 steps fall mid-epoch (4, 8, 16, ...).
    raw = _config(max_steps=24, val_every=6, checkpoint_every=4)
    config = _write(tmp_path, raw)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(_cli("train", "--config", str(config), "--out", str(tmp_path / "full"), "--no-progress"),
                   check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", "--config", str(config), "--out", str(killed), "--no-progress"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last" / "checkpoint.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and json.loads(last.read_text()).get("step", 0) >= 8:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((killed / "checkpoints" / "last" / "train_state.json").read_text())["counters"]
    assert state["step"] < 24 and state["batch_in_epoch"] not in (0, 6), state

    subprocess.run(_cli("train", "--out", str(killed), "--resume", "--no-progress"), check=True, env=env,
                   capture_output=True)
    full = json.loads((tmp_path / "full" / "val_metrics.json").read_text())
    resumed = json.loads((killed / "val_metrics.json").read_text())
    assert resumed == full
    weights = [load_file(run / "checkpoints" / "last" / "model.safetensors") for run in (tmp_path / "full", killed)]
    for key, value in weights[0].items():
        torch.testing.assert_close(weights[1][key], value, rtol=0, atol=0)
    steps = [r["step"] for r in _read_log(killed) if "train_loss" in r]
    assert steps == list(range(1, 25))  # the rows the killed run logged past its checkpoint were replaced


def test_ddp_with_two_cpu_processes_matches_one_process(tmp_path):
    raw = _config(max_steps=6, val_every=3, checkpoint_every=6)
    config = _write(tmp_path, raw)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cli("train", "--config", str(config), "--out", str(tmp_path / "one"), "--no-progress"),
                   check=True, env=env, capture_output=True)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run([*torchrun, "-m", "medssm", "train", "--config", str(config), "--out",
                             str(tmp_path / "two"), "--no-progress"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = _read_log(tmp_path / "one"), _read_log(tmp_path / "two")
    losses = [[r["train_loss"] for r in rows if "train_loss" in r] for rows in (one, two)]
    assert len(losses[0]) == len(losses[1]) == 6
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-3, atol=1e-4,
                               msg=lambda m: f"{m}\nlosses one process {losses[0]}\ntwo processes {losses[1]}")
    # Validation Dice after a few steps: pixels with probabilities near 0.5 can flip class with the gradient
    # summation order (DDP all-reduce vs one process), so the tolerance allows a few pixels, not just rounding.
    dice = [[r["val_dice"] for r in rows if "val_dice" in r] for rows in (one, two)]
    torch.testing.assert_close(torch.tensor(dice[1]), torch.tensor(dice[0]), rtol=0, atol=1e-2)
    assert not list((tmp_path / "two").glob("**/*.partial*"))


def test_classification_on_a_medmnist_file_and_1d_signals_from_a_ucr_file(tmp_path):
    import numpy as np

    from medssm.engine.evaluate import evaluate

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        labels = np.arange(n) % 3
        images = (rng.random((n, 20, 20)) * 60 + labels[:, None, None] * 60).astype(np.uint8)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels[:, None]
    np.savez(tmp_path / "toy.npz", **arrays)
    raw = {"model": {"name": "mini_mamba_classifier", "args": {"features": [8, 16], "mamba_stages": 1}},
           "data": {"name": "medmnist", "args": {"path": str(tmp_path / "toy.npz"), "num_classes": 3}},
           "train": {"max_steps": 3, "batch_size": 4, "val_every": 3}}
    summary = train(config_from_dict(raw), tmp_path / "cls", progress=False)
    assert summary["best_metric"] == "auc"
    assert set(summary["val_metrics"]) == {"accuracy", "balanced_accuracy", "auc", "f1"}
    metrics = evaluate(tmp_path / "cls" / "checkpoints" / "best", tmp_path / "cls_eval")
    assert 0 <= metrics["accuracy"] <= 1 and (tmp_path / "cls_eval" / "metrics.md").is_file()
    info = json.loads((tmp_path / "cls_eval" / "metrics.json").read_text())["info"]
    assert info["device"] == "cpu" and 0 < info["inference_seconds_per_case"] < 10
    # issue 26, item 12: classification reports as rich as segmentation's
    assert {"support_0", "recall_2", "precision_1", "f1_0", "auc_2"} <= set(metrics)
    assert sum(metrics[f"support_{k}"] for k in range(3)) == 8
    rows = (tmp_path / "cls_eval" / "per_case.csv").read_text().splitlines()
    assert rows[0] == "case,label,predicted,prob_0,prob_1,prob_2" and rows[1].startswith("test_0,0,")
    assert len(rows) == 9 and "recall_1" in (tmp_path / "cls_eval" / "metrics.md").read_text()
    for png in ("confusion.png", "roc.png"):
        assert (tmp_path / "cls_eval" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    lines = [" ".join([str(1 + i % 2)] + [f"{np.sin(t / (3 + i % 2)):.4f}" for t in range(40)]) for i in range(12)]
    (tmp_path / "Toy_TRAIN.txt").write_text("\n".join(lines))
    (tmp_path / "Toy_TEST.txt").write_text("\n".join(lines[:6]))
    raw["data"] = {"name": "ucr", "args": {"path": str(tmp_path), "name": "Toy", "val_fraction": 0.25}}
    raw["transforms"] = {"modality": "signal"}
    summary = train(config_from_dict(raw), tmp_path / "ucr", progress=False)
    meta = json.loads((tmp_path / "ucr" / "checkpoints" / "best" / "checkpoint.json").read_text())
    assert meta["model_args"]["spatial_dims"] == 1 and meta["num_classes"] == 2
    assert 0 <= summary["val_metrics"]["auc"] <= 1


def test_progress_bar_with_validation_between_log_rows(tmp_path, capsys):
    train(config_from_dict(_config(max_steps=4, val_every=3, log_every=2)), tmp_path / "r", progress=True)
    assert "4/4" in capsys.readouterr().err


def test_dataloader_workers_do_not_change_the_result(tmp_path):
    """Augmentations are seeded per sample, so worker processes give the same run as the main process."""
    summaries = [train(config_from_dict(_config(max_steps=4, val_every=4, num_workers=workers)),
                       tmp_path / f"w{workers}", progress=False) for workers in (0, 2)]
    assert summaries[0]["val_metrics"] == summaries[1]["val_metrics"]


def test_resume_without_a_checkpoint_says_so(tmp_path):
    from medssm.engine.config import save_config

    (tmp_path / "r").mkdir()
    save_config(config_from_dict(_config()), tmp_path / "r" / "config.yaml")
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        train(None, tmp_path / "r", resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(None, tmp_path / "missing", resume=True, progress=False)


def test_a_run_that_failed_before_its_first_checkpoint_leaves_a_reusable_folder(tmp_path):
    # issue 26, defect 3: the folder kept config.yaml, a rerun was refused and --resume reused the bad config
    bad = _config(max_steps=2)
    bad["model"]["args"] = {"no_such_argument": 1}
    with pytest.raises(TypeError, match="no_such_argument"):
        train(config_from_dict(bad), tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "config.yaml").exists()
    with pytest.raises(FileNotFoundError, match="start it again without --resume"):
        train(None, tmp_path / "r", resume=True, progress=False)
    summary = train(config_from_dict(_config(max_steps=2, val_every=2)), tmp_path / "r", progress=False)
    assert summary["step"] == 2
    with pytest.raises(FileExistsError, match="not empty"):  # now it holds a run: kept without --overwrite
        train(config_from_dict(_config(max_steps=2, val_every=2)), tmp_path / "r", progress=False)


def test_a_log_line_cut_short_by_a_kill_is_dropped_on_resume(tmp_path):
    from medssm.engine.distributed import DistInfo
    from medssm.engine.trainer import RunLog

    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1, "train_loss": 0.5}\n{"step": 2, "train_loss": 0.4}\n{"step": 3, "train_lo')
    log = RunLog(path, DistInfo())
    log.load(up_to_step=2)
    assert [r["step"] for r in log.rows] == [1, 2]
    assert [r["step"] for r in _read_log(tmp_path)] == [1, 2]


def test_classes_absent_from_every_split_are_warned_with_the_counts(caplog):
    # issue 26, defect 4: num_classes larger than the labels present trained silently
    from types import SimpleNamespace

    from medssm.engine.setup import warn_absent_classes

    train = SimpleNamespace(task="classification", labels=torch.tensor([[0], [1], [1]]))
    val = SimpleNamespace(task="classification", labels=torch.tensor([0, 0]))
    with caplog.at_level("WARNING", logger="medssm.engine.setup"):
        assert warn_absent_classes(4, {"train": train, "val": val}) == [2, 3]
    assert "classes [2, 3] occur in no split" in caplog.text and "train {0: 1, 1: 2}; val {0: 2}" in caplog.text
    caplog.clear()
    assert warn_absent_classes(2, {"train": train, "val": val}) == [] and not caplog.text
    masks = SimpleNamespace(task="segmentation")
    assert warn_absent_classes(9, {"train": masks}) == []


def test_the_best_checkpoint_is_selected_on_the_metric_asked_for(tmp_path):
    # issue 26, item 11 (part): model selection on any validation metric, not only the task's default
    from medssm.engine.metrics import selection_metric

    assert selection_metric("auto", "segmentation") == "dice" and selection_metric("hd95_1", "x") == "hd95_1"
    with pytest.raises(ValueError, match="unknown metric name 'dcie'"):
        selection_metric("dcie", "segmentation")
    summary = train(config_from_dict(_config(max_steps=2, val_every=2, select_metric="dice_1")), tmp_path / "r",
                    progress=False)
    assert summary["best_metric"] == "dice_1"
    with pytest.raises(ValueError, match="train.select_metric 'auc_7' is not among the validation metrics"):
        train(config_from_dict(_config(max_steps=2, val_every=2, select_metric="auc_7")), tmp_path / "s",
              progress=False)
