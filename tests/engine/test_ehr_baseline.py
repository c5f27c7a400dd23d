"""`medssm ehr-baseline`: boosted trees on summaries through the config's splits, the evaluate report files,
the iteration count picked on the validation split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import roc_auc_score

from medssm.cli import main
from medssm.data.ehr import PhysioNet2012, summary_features
from medssm.data.ehr.synthetic import write_synthetic_challenge


def test_boosted_trees_report_like_evaluate(tmp_path, capsys):
    root = write_synthetic_challenge(tmp_path / "p12", stays=120, events=30)
    out = tmp_path / "hgb"
    assert main(["ehr-baseline", "--config", "physionet2012", "--out", str(out), "--max-iter", "30",
                 f"data.args.root={root}"]) == 0
    assert "test AUROC" in capsys.readouterr().out
    report = json.loads((out / "metrics.json").read_text())
    summary = json.loads((out / "val_metrics.json").read_text())
    for name in ("metrics.md", "per_case.csv", "roc.png", "confusion.png", "reliability.png"):
        assert (out / name).stat().st_size > 0
    # the same numbers from scikit-learn directly, at the iteration count picked on val
    splits = {s: PhysioNet2012(root, s) for s in ("train", "val", "test")}
    model = HistGradientBoostingClassifier(max_iter=30, learning_rate=0.05, early_stopping=False, random_state=0)
    model.fit(summary_features(splits["train"].stays)[0], splits["train"].labels.numpy())
    val_auc = [roc_auc_score(splits["val"].labels, p[:, 1])
               for p in model.staged_predict_proba(summary_features(splits["val"].stays)[0])]
    assert summary["iterations"] == int(np.argmax(val_auc)) + 1
    test_prob = list(model.staged_predict_proba(summary_features(splits["test"].stays)[0]))[summary["iterations"] - 1]
    assert report["metrics"]["auc"] == pytest.approx(roc_auc_score(splits["test"].labels, test_prob[:, 1]))
    assert report["metrics"]["auc"] > 0.6  # the generated labels follow Lactate and GCS
    assert main(["ehr-baseline", "--config", "physionet2012", "--out", str(out), f"data.args.root={root}"]) == 2
    assert main(["ehr-baseline", "--config", "demo", "--out", str(tmp_path / "x")]) == 2  # not event data
