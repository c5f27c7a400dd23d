"""The "events" task in the engine: a generated PhysioNet-format set trains 2 steps and is evaluated through
the CLI (AUROC, AUPRC, Brier, the reliability plot); the training split's bins travel in the checkpoint;
FHIR-read data trains the same model; AUPRC and Brier against scikit-learn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, brier_score_loss

from medssm.cli import main
from medssm.data.ehr import PhysioNet2012
from medssm.data.ehr.synthetic import write_synthetic_challenge
from medssm.engine.checkpoint import load_model, read_meta
from medssm.engine.metrics import Metrics, probabilities, selection_metric
from medssm.engine.report import reliability_bins

FAST = ["model.args.d_model=16", "model.args.depth=1", "data.args.max_length=48", "train.max_steps=2",
        "train.batch_size=8", "train.val_every=2", "train.checkpoint_every=2", "train.warmup_steps=0"]


@pytest.fixture(scope="module")
def challenge(tmp_path_factory) -> Path:
    return write_synthetic_challenge(tmp_path_factory.mktemp("p12"), stays=24, events=30)


def _train(root: Path, out: Path, *extra: str) -> None:
    assert main(["train", "--config", "physionet2012", "--out", str(out), "--no-progress", "--device", "cpu",
                 f"data.args.root={root}", *FAST, *extra]) == 0


def test_train_and_evaluate_through_the_cli(challenge, tmp_path):
    run = tmp_path / "run"
    _train(challenge, run)
    meta = read_meta(run / "checkpoints" / "best")
    assert meta["task"] == "events" and "spatial_dims" not in meta["model_args"]
    assert meta["model_args"]["in_channels"] == 412 and meta["data"]["tokenizer"]["num_bins"] == 10
    assert main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    assert {"auc", "auprc", "brier", "accuracy", "auc_1"} <= set(metrics) and 0 <= metrics["brier"] <= 1
    for name in ("reliability.png", "roc.png", "confusion.png", "per_case.csv"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    rows = (tmp_path / "eval" / "per_case.csv").read_text().splitlines()
    assert rows[0].startswith("case,label,predicted,prob_0,prob_1") and len(rows) == 25
    assert main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "eval2"), "--tta"]) == 2


def test_evaluate_uses_the_bins_saved_with_the_run(challenge, tmp_path):
    root = tmp_path / "p12"
    write_synthetic_challenge(root, stays=24, events=30)
    run = tmp_path / "run"
    _train(root, run)
    saved = read_meta(run / "checkpoints" / "best")["data"]["tokenizer"]
    for path in (root / "set-a").glob("*.txt"):  # the training files change after training
        path.write_text(path.read_text().replace(",HR,", ",Temp,"))
    assert main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    assert PhysioNet2012(root, "test", max_length=48).tokenizer.to_dict() != saved  # a refit would differ now
    model, _ = load_model(run / "checkpoints" / "best", torch.device("cpu"))
    test = PhysioNet2012(root, "test", max_length=48, tokenizer=saved)
    with torch.no_grad():
        expected = torch.softmax(model.eval()(torch.stack([test[i]["image"] for i in range(len(test))])), 1)[:, 1]
    with open(tmp_path / "eval" / "per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == test.cases
    np.testing.assert_allclose([float(r["prob_1"]) for r in rows], expected.numpy(), rtol=1e-5)


def test_fhir_read_data_trains_the_same_model(challenge, tmp_path):
    fhir = tmp_path / "fhir"
    assert main(["fhir", "export", "--source", str(challenge), "--out", str(fhir)]) == 0
    _train(challenge, tmp_path / "csv")
    _train(fhir, tmp_path / "fhir-run", "data.args.format=fhir")
    for name in ("csv", "fhir-run"):
        assert main(["evaluate", "--checkpoint", str(tmp_path / name), "--out", str(tmp_path / f"eval-{name}")]) == 0
    csv_rows = (tmp_path / "eval-csv" / "per_case.csv").read_text()
    assert csv_rows == (tmp_path / "eval-fhir-run" / "per_case.csv").read_text()


def test_auprc_and_brier_match_scikit_learn_and_leave_the_other_keys_alone():
    torch.manual_seed(0)
    logits = torch.randn(60, 2)
    target = torch.randint(0, 2, (60,))
    prob = probabilities("events", logits)
    for task in ("events", "classification"):
        metrics = Metrics(task, 2)
        metrics.update(prob[:30], target[:30])
        metrics.update(prob[30:], target[30:])
        out = metrics.compute()
        assert out["auprc"] == pytest.approx(average_precision_score(target.numpy(), prob[:, 1].numpy()))
        assert out["brier"] == pytest.approx(brier_score_loss(target.numpy(), prob[:, 1].numpy()))
    three = Metrics("classification", 3)
    three.update(torch.softmax(torch.randn(10, 3), 1), torch.randint(0, 3, (10,)))
    assert "auprc" not in three.compute()  # binary only
    assert selection_metric("auto", "events") == "auc" and selection_metric("auprc", "events") == "auprc"


def test_reliability_bins_against_a_hand_count():
    positive = np.array([0.05, 0.08, 0.15, 0.95, 1.0, 0.55])
    target = np.array([0, 1, 0, 1, 1, 0])
    assert reliability_bins(positive, target, bins=10) == [
        (pytest.approx(0.065), 0.5, 2), (pytest.approx(0.15), 0.0, 1), (pytest.approx(0.55), 0.0, 1),
        (pytest.approx(0.975), 1.0, 2)]
