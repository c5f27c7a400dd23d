"""The classical anchor for event sequences: gradient-boosted trees (scikit-learn's
HistGradientBoostingClassifier) on per-variable summaries of each stay, through the same splits, metrics and
report files as the neural models (``medssm ehr-baseline``).

Features (:func:`medssm.data.ehr.physionet2012.summary_features`): for each of the 37 series variables its
last, first, min, max, mean and count over the stay (NaN where never measured: the trees route missing
values natively), plus the 5 descriptors, computed from the same cleaned stays the tokens come from.

Protocol: fit on the config's train split with ``max_iter`` boosting iterations; the number of iterations
is then chosen on the validation split (the best AUROC of the staged predictions, the neural models'
selection rule); the test split is scored once at that number. Nothing is saved but the reports: the model
is retrained (deterministic for a given seed) rather than pickled. Writes into ``out``: ``val_metrics.json``
and, for the test split, ``metrics.json``, ``metrics.md``, ``per_case.csv``, ``roc.png``, ``confusion.png``
and ``reliability.png``, in the formats of ``medssm evaluate``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import build_dataset
from ..data.ehr.physionet2012 import summary_features
from .config import Config
from .files import check_output, write_text_atomic
from .metrics import Metrics, confusion_matrix, per_class_classification
from .report import plot_confusion, plot_reliability, plot_roc, write_metrics

logger = logging.getLogger(__name__)

REPORT_FILES = ("val_metrics.json", "metrics.json", "metrics.md", "per_case.csv", "roc.png", "confusion.png",
                "reliability.png")


def _split(config: Config, split: str) -> Any:
    dataset = build_dataset(config.data.name, split=split, **config.data.args)
    if getattr(dataset, "task", None) != "events" or not hasattr(dataset, "stays"):
        raise ValueError(f"ehr-baseline needs an event data set with stays (physionet2012), got {config.data.name!r}")
    return dataset


def _scores(prob: np.ndarray, labels: torch.Tensor) -> dict[str, float]:
    metrics = Metrics("events", 2)
    metrics.update(torch.from_numpy(prob).float(), labels)
    return metrics.compute()


def run_boosted_trees(config: Config, out: str | Path, overwrite: bool = False, max_iter: int = 500,
                      learning_rate: float = 0.05, seed: int | None = None) -> dict[str, Any]:
    """Fit, select and score the boosted trees (module docstring); returns {"val": ..., "test": ...,
    "iterations": ..., "fit_seconds": ...}."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    out = Path(out)
    for name in REPORT_FILES:
        check_output(out / name, overwrite, "report file")
    out.mkdir(parents=True, exist_ok=True)
    seed = config.train.seed if seed is None else seed
    sets = {split: _split(config, split) for split in ("train", config.data.val_split, config.data.test_split)}
    train, val, test = sets["train"], sets[config.data.val_split], sets[config.data.test_split]
    features = {name: summary_features(d.stays)[0] for name, d in sets.items()}
    model = HistGradientBoostingClassifier(max_iter=max_iter, learning_rate=learning_rate, early_stopping=False,
                                           random_state=seed)
    started = time.perf_counter()
    model.fit(features["train"], train.labels.numpy())
    fit_seconds = time.perf_counter() - started
    staged = [p for p in model.staged_predict_proba(features[config.data.val_split])]
    aucs = [_scores(p, val.labels)["auc"] for p in staged]
    best = int(np.nanargmax(aucs))
    val_scores = _scores(staged[best], val.labels)
    prob = list(model.staged_predict_proba(features[config.data.test_split]))[best]
    test_scores = _scores(prob, test.labels)
    prob_t, labels = torch.from_numpy(prob).float(), test.labels
    test_scores.update(per_class_classification(prob_t, labels))
    summary = {"model": "hist_gradient_boosting", "iterations": best + 1, "max_iter": max_iter,
               "learning_rate": learning_rate, "seed": seed, "fit_seconds": round(fit_seconds, 2),
               "val_metrics": val_scores}
    write_text_atomic(out / "val_metrics.json", json.dumps(summary, indent=2))
    per_case = [{"case": c, "label": int(y), "predicted": int(p.argmax()), "prob_0": float(p[0]), "prob_1": float(p[1])}
                for c, y, p in zip(test.cases, labels.tolist(), prob, strict=True)]
    info = {"model": "hist_gradient_boosting (summaries)", "dataset": config.data.name,
            "split": config.data.test_split, "cases": len(test), "seed": seed, "iterations": best + 1,
            "fit_seconds": round(fit_seconds, 2)}
    write_metrics(test_scores, out, title=f"boosted trees on {config.data.name} ({config.data.test_split})",
                  info=info, per_case=per_case)
    plot_roc(prob_t, labels, out / "roc.png")
    plot_confusion(confusion_matrix(prob_t, labels), out / "confusion.png")
    plot_reliability(prob_t[:, 1], labels, out / "reliability.png")
    logger.info("boosted trees: %d iterations (best val AUROC %.4f), test %s", best + 1, val_scores["auc"],
                test_scores)
    return {"val": val_scores, "test": test_scores, "iterations": best + 1, "fit_seconds": fit_seconds}
