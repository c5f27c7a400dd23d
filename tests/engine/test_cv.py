"""`medssm cv` on a generated image/mask folder: 3 folds, a kill in fold 2 then the same command again (fold 2
resumes, folds 0 and 1 are not touched), the aggregate table against the folds' own reports, the saved splits,
and the ensemble of the folds evaluated and predicted through the command line."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from medssm.cli import main
from medssm.data import kfold_split
from medssm.engine import trainer
from medssm.engine.config import config_from_dict
from medssm.engine.cv import cross_validate, fold_config

CASES = [f"c{i}" for i in range(9)]


def _image_folder(root: Path, names: list[str], seed: int) -> Path:
    """16x16 grey images of a bright square in noise, with 0/255 masks of the square."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for name in names:
        top, left = rng.integers(2, 9, size=2)
        mask = np.zeros((16, 16), np.uint8)
        mask[top:top + 6, left:left + 6] = 255
        image = np.clip(rng.normal(60, 25, (16, 16)) + (mask > 0) * 120, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def _config(data: Path) -> dict:
    return {"model": {"name": "unet", "args": {"features": [4, 4, 8, 8, 16, 4]}},
            "data": {"name": "folder", "args": {"root": str(data), "val_fraction": 0.2, "test_fraction": 0.0,
                                                "seed": 3}},
            "train": {"max_steps": 2, "batch_size": 2, "val_every": 2, "checkpoint_every": 1, "log_every": 1}}


def _cv(config: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["cv", "--config", str(config), "--folds", "3", "--out", str(out), "--no-progress", *extra])
    return code, stdout.getvalue(), stderr.getvalue()


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory) -> dict:
    """Fold 2 killed after its first step, the data changed (refused), then the same command to the end."""
    tmp = tmp_path_factory.mktemp("cv")
    data = _image_folder(tmp / "data", CASES, seed=0)
    config = tmp / "cv.yaml"
    config.write_text(yaml.safe_dump(_config(data)))
    out = tmp / "cv"
    original = trainer._train_step

    def killed_in_fold_2(run, batch):
        if run.out_dir.name == "fold_2" and run.counters["step"] == 1:
            raise KeyboardInterrupt  # what a kill leaves: fold 2's checkpoint at step 1, nothing after it
        return original(run, batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "_train_step", killed_in_fold_2)
        with pytest.raises(KeyboardInterrupt):
            _cv(config, out)
    before = {i: _mtimes(out / f"fold_{i}") for i in (0, 1)}
    moved = data / "images" / "c4.png"  # another case list gives other folds: resuming fold 2 must refuse
    moved.rename(tmp / "c4.png")
    refused = _cv(config, out)
    (tmp / "c4.png").rename(moved)
    code, stdout, stderr = _cv(config, out)
    assert code == 0, stderr
    return {"tmp": tmp, "data": data, "config": config, "out": out, "before": before, "stdout": stdout,
            "refused": refused}


def test_a_rerun_after_a_kill_in_fold_2_resumes_it_and_leaves_folds_0_and_1_alone(cv_run):
    out, stdout = cv_run["out"], cv_run["stdout"]
    code, _, stderr = cv_run["refused"]  # the data changed under fold 2: named, and nothing trained
    assert code == 2 and "splits.json: the data gives another split" in stderr
    assert re.search(r"lost \[[^\]]*'c4'", stderr), stderr
    for i in (0, 1):
        assert f"fold {i} ({i + 1} of 3): trained already, skipped" in stdout
        assert f"fold {i} ({i + 1} of 3): scored already" in stdout
        assert _mtimes(out / f"fold_{i}") == cv_run["before"][i], f"fold {i} was touched by the rerun"
    assert "fold 2 (3 of 3): resuming" in stdout and "fold 2 (3 of 3): training" not in stdout
    rows = [json.loads(line) for line in (out / "fold_2" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2]
    assert json.loads((out / "fold_2" / "val_metrics.json").read_text())["step"] == 2


def test_the_folds_are_seeded_saved_and_partition_the_cases(cv_run):
    out = cv_run["out"]
    tests = []
    for i in range(3):
        saved = json.loads((out / f"fold_{i}" / "splits.json").read_text())
        expected = kfold_split(CASES, i, 3, val_fraction=0.2, seed=3)
        assert (saved["fold"], saved["num_folds"]) == (i, 3)
        assert {role: saved[role]["cases"] for role in ("train", "val", "test")} == expected
        tests += saved["test"]["cases"]
    assert sorted(tests) == CASES


def test_the_aggregate_table_is_the_folds_mean_and_spread(cv_run):
    out = cv_run["out"]
    folds = [json.loads((out / f"fold_{i}" / "eval-test" / "metrics.json").read_text())["metrics"] for i in range(3)]
    with open(out / "cv_metrics.csv", newline="") as f:
        table = {row["fold"]: row for row in csv.DictReader(f)}
    assert list(table) == ["0", "1", "2", "mean", "std", "pooled"]
    for key in ("dice", "hd95", "auc"):
        values = [fold[key] for fold in folds]
        assert [float(table[str(i)][key]) for i in range(3)] == pytest.approx(values, rel=1e-12)
        assert float(table["mean"][key]) == pytest.approx(np.mean(values), rel=1e-12)
        assert float(table["std"][key]) == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    with open(out / "cv_predictions.csv", newline="") as f:
        cases = list(csv.DictReader(f))
    assert sorted(row["case"] for row in cases) == CASES
    dice = [float(row["dice"]) for row in cases if row["dice"]]
    assert float(table["pooled"]["dice"]) == pytest.approx(np.mean(dice), rel=1e-12)
    summary = (out / "cv_summary.md").read_text()
    assert f"| dice | {float(table['mean']['dice']):.4f} ± {float(table['std']['dice']):.4f} |" in summary


def test_another_config_in_the_same_folder_is_refused(cv_run):
    code, _, stderr = _cv(cv_run["config"], cv_run["out"], "train.lr=0.5")
    assert code == 2 and "another config (train.lr: 0.001 -> 0.5)" in stderr


def test_the_ensemble_of_the_folds_is_evaluated_and_predicted_through_the_command_line(cv_run, caplog):
    tmp, out = cv_run["tmp"], cv_run["out"]
    new = _image_folder(tmp / "new", ["n0", "n1"], seed=7)
    on_new_data = [f"data.args.root={new}", "data.args.fold=null", "data.args.num_folds=null",
                   "data.args.val_fraction=0", "data.args.test_fraction=1"]
    with caplog.at_level(logging.WARNING, logger="medssm.engine.ensemble"):
        assert main(["evaluate", "--checkpoint", str(out), "--out", str(tmp / "ens"), "--no-progress",
                     *on_new_data]) == 0
    assert "different cross-validation folds" not in caplog.text
    report = json.loads((tmp / "ens" / "metrics.json").read_text())
    assert report["info"]["checkpoint"].startswith("ensemble of 3:") and report["info"]["cases"] == 2
    with caplog.at_level(logging.WARNING, logger="medssm.engine.ensemble"):  # a fold's own test cases: leakage
        assert main(["evaluate", "--checkpoint", str(out), "--out", str(tmp / "leak"), "--no-progress"]) == 0
    assert "different cross-validation folds" in caplog.text

    probabilities = []
    for i, checkpoint in enumerate([out / f"fold_{i}" for i in range(3)] + [out]):
        target = tmp / f"pred_{i}"
        assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(new / "images"), "--output",
                     str(target), "--probabilities", "--no-progress"]) == 0
        probabilities.append(np.load(target / "n0_prob.npz")["probabilities"])
    np.testing.assert_allclose(probabilities[3], np.mean(probabilities[:3], axis=0), rtol=1e-5, atol=1e-6)
    mask = np.array(Image.open(tmp / "pred_3" / "n0.png"))
    np.testing.assert_array_equal(mask > 0, probabilities[3].argmax(0) == 1)
    two = tmp / "pred_two"  # --checkpoint repeated: the same mean over the members named
    assert main(["predict", "--checkpoint", str(out / "fold_0"), "--checkpoint", str(out / "fold_1"), "--input",
                 str(new / "images"), "--output", str(two), "--probabilities", "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(two / "n0_prob.npz")["probabilities"], np.mean(probabilities[:2], axis=0),
                               rtol=1e-5, atol=1e-6)


def test_fold_config_and_datasets_without_folds():
    config = config_from_dict({"data": {"name": "folder", "args": {"root": "x", "test_fraction": 0.2}},
                               "train": {"max_steps": 1}})
    args = fold_config(config, 1, 5).data.args
    assert (args["fold"], args["num_folds"], args["test_fraction"]) == (1, 5, 0.0)
    medmnist = config_from_dict({"data": {"name": "medmnist", "args": {"path": "x.npz"}}, "train": {"max_steps": 1}})
    with pytest.raises(ValueError, match="official splits.*cross-validation runs on \\[.*'folder'"):
        cross_validate(medmnist, "unused", folds=3)
    with pytest.raises(ValueError, match="--folds must be an integer >= 2"):
        cross_validate(config, "unused", folds=1)
