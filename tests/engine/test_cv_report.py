"""The aggregate of a classification cross-validation written from fold reports made here: the table's mean and
sample std over folds (a fold's missing value skipped), and the pooled metrics over every case against
scikit-learn's on the same probabilities."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from medssm.engine.checkpoint import save_checkpoint
from medssm.engine.cv_report import EVAL_DIR, aggregate
from medssm.engine.folds import fold_dir


def _fold(cv, i: int, metrics: dict, labels: np.ndarray, prob1: np.ndarray) -> None:
    report = fold_dir(cv, i) / EVAL_DIR
    report.mkdir(parents=True)
    (report / "metrics.json").write_text(json.dumps({"title": "t", "info": {}, "metrics": metrics}))
    with open(report / "per_case.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "label", "predicted", "prob_0", "prob_1"])
        for n, (y, p) in enumerate(zip(labels, prob1, strict=True)):
            writer.writerow([f"f{i}_{n}", int(y), int(p >= 0.5), 1 - p, p])
    meta = {"model": "tiny", "model_args": {}, "task": "classification", "num_classes": 2,
            "config": {"data": {"name": "folder"}}}
    save_checkpoint(fold_dir(cv, i) / "checkpoints" / "best", torch.nn.Linear(1, 1), meta)


def test_classification_folds_mean_std_and_pooled_over_every_case(tmp_path):
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 2, n) for n in (5, 6, 4)]
    probs = [np.clip(0.5 * y + rng.random(len(y)) * 0.6, 0, 1) for y in labels]
    fold_metrics = [{"accuracy": 0.6, "auc": 0.7}, {"accuracy": 0.8, "auc": None}, {"accuracy": 0.5, "auc": 0.9}]
    for i in range(3):
        _fold(tmp_path, i, fold_metrics[i], labels[i], probs[i])
    result = aggregate(tmp_path, 3)
    assert result["mean"]["accuracy"] == pytest.approx(np.mean([0.6, 0.8, 0.5]))
    assert result["std"]["accuracy"] == pytest.approx(np.std([0.6, 0.8, 0.5], ddof=1))
    assert result["mean"]["auc"] == pytest.approx(0.8) and result["std"]["auc"] == pytest.approx(np.std([0.7, 0.9],
                                                                                                         ddof=1))
    y, p = np.concatenate(labels), np.concatenate(probs)
    pooled = result["pooled"]
    assert result["cases"] == 15
    assert pooled["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    assert pooled["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
    assert pooled["auc"] == pytest.approx(roc_auc_score(y, p))
    with open(tmp_path / "cv_metrics.csv", newline="") as f:
        table = {row["fold"]: row for row in csv.DictReader(f)}
    assert table["1"]["auc"] == "" and float(table["pooled"]["auc"]) == pytest.approx(roc_auc_score(y, p))
    summary = (tmp_path / "cv_summary.md").read_text()
    assert "computed once on the probabilities of all test cases together" in summary
    assert "| auc | 0.8000 ± 0.1414 |" in summary
    with open(tmp_path / "cv_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["fold"] for row in rows] == ["0"] * 5 + ["1"] * 6 + ["2"] * 4
