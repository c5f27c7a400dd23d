"""The aggregate of a cross-validation: one table over the folds, the per-case rows of every test fold pooled.

Written into the cross-validation folder by :func:`aggregate` from each fold's ``fold_<i>/eval-test``
(``metrics.json`` and ``per_case.csv``, see :func:`medssm.engine.evaluate.evaluate`):

- ``cv_metrics.csv``: one row per fold, then ``mean`` and ``std`` (the sample standard deviation over the
  folds, n - 1), then ``pooled`` where the per-case rows allow it.
- ``cv_predictions.csv``: the per-case rows of every test fold with a ``fold`` column; every case appears
  once, since the test folds partition the data.
- ``cv_summary.md``: metric, mean ± std, pooled, and each fold's value.

Two ways to summarise, as nnU-Net and the MIL literature report them: the mean over folds weighs each fold
equally; ``pooled`` weighs each case equally. For classification (any task whose per-case rows hold ``label``
and ``prob_<k>``) the pooled metrics are computed once on the probabilities of all test cases together (a
pooled AUC is not a mean of fold AUCs); for segmentation and restoration, whose metrics are per case, pooled
is the mean of the per-case values over all cases.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..conventions import DENSE_TASKS
from .checkpoint import read_meta
from .files import atomic_path, write_text_atomic
from .folds import fold_dir
from .metrics import Metrics, per_class_classification

EVAL_DIR = "eval-test"  # each fold's report on its own test fold


def aggregate(cv_dir: str | Path, folds: int) -> dict[str, Any]:
    """Write cv_metrics.csv, cv_predictions.csv and cv_summary.md into ``cv_dir`` from its ``folds`` scored
    folds; returns {"metrics": [per fold], "mean", "std", "pooled" (None where not available), "cases"}."""
    cv_dir = Path(cv_dir)
    per_fold = [_read_metrics(fold_dir(cv_dir, i) / EVAL_DIR / "metrics.json") for i in range(folds)]
    keys = list(dict.fromkeys(key for metrics in per_fold for key in metrics))
    table = np.array([[metrics.get(key, math.nan) for key in keys] for metrics in per_fold], dtype=np.float64)
    mean = dict(zip(keys, _nan_mean(table), strict=True))
    std = dict(zip(keys, _nan_std(table), strict=True))
    rows = []
    for i in range(folds):
        path = fold_dir(cv_dir, i) / EVAL_DIR / "per_case.csv"
        if path.is_file():
            with open(path, newline="") as f:
                rows += [{"fold": i, **row} for row in csv.DictReader(f)]
    meta = read_meta(fold_dir(cv_dir, 0) / "checkpoints" / "best")
    pooled = _pooled(meta["task"], meta["num_classes"], rows)
    result = {"metrics": per_fold, "mean": mean, "std": std, "pooled": pooled, "cases": len(rows) or None}
    _write_table(cv_dir / "cv_metrics.csv", keys, per_fold, mean, std, pooled)
    if rows:
        _write_rows(cv_dir / "cv_predictions.csv", rows)
    write_text_atomic(cv_dir / "cv_summary.md", _summary(cv_dir, meta, keys, result))
    return result


def _read_metrics(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the fold has no test report; rerun medssm cv to score it")
    metrics = json.loads(path.read_text())["metrics"]
    return {key: math.nan if value is None else float(value) for key, value in metrics.items()
            if value is None or isinstance(value, (int, float))}


def _nan_mean(table: np.ndarray) -> list[float]:
    """Column means over the finite values (nan where a column has none)."""
    return [float(np.mean(col[np.isfinite(col)])) if np.isfinite(col).any() else math.nan for col in table.T]


def _nan_std(table: np.ndarray) -> list[float]:
    """Column sample standard deviations (n - 1) over the finite values (nan below two values)."""
    return [float(np.std(col[np.isfinite(col)], ddof=1)) if np.isfinite(col).sum() > 1 else math.nan
            for col in table.T]


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _pooled(task: str, num_classes: int, rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Metrics over every test case (see the module doc); None without per-case rows."""
    if not rows:
        return None
    if "label" in rows[0] and all(f"prob_{k}" in rows[0] for k in range(num_classes)):  # single-label cases
        prob = torch.tensor([[_number(row[f"prob_{k}"]) for k in range(num_classes)] for row in rows])
        label = torch.tensor([int(row["label"]) for row in rows])
        metrics = Metrics("classification", num_classes)
        metrics.update(prob, label)
        return {**metrics.compute(), **per_class_classification(prob, label)}
    if task not in DENSE_TASKS:
        return None
    columns = [key for key in rows[0] if key not in ("fold", "case")]
    return {key: _nan_mean(np.array([[_number(row.get(key)) for row in rows]]).T)[0] for key in columns}


def _cell(value: Any) -> Any:
    return "" if isinstance(value, float) and not math.isfinite(value) else value


def _write_table(path: Path, keys: list[str], per_fold: list[dict[str, float]], mean: dict[str, float],
                 std: dict[str, float], pooled: dict[str, float] | None) -> None:
    named = [(str(i), metrics) for i, metrics in enumerate(per_fold)] + [("mean", mean), ("std", std)]
    if pooled is not None:
        named.append(("pooled", pooled))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["fold", *keys])
        for name, values in named:
            writer.writerow([name, *(_cell(values.get(key, math.nan)) for key in keys)])


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _summary(cv_dir: Path, meta: dict[str, Any], keys: list[str], result: dict[str, Any]) -> str:
    folds = len(result["metrics"])
    config = meta.get("config", {})
    pooled = result["pooled"]
    how = ("pooled: the mean of the per-case values over all test cases" if meta["task"] in DENSE_TASKS
           else "pooled: computed once on the probabilities of all test cases together")
    lines = [f"# Cross-validation: {meta['model']} on {config.get('data', {}).get('name')}, {folds} folds", "",
             f"- folder: {cv_dir}",
             f"- each fold's best checkpoint scored on its own test fold ({result['cases'] or '?'} test cases in all)",
             "- mean ± std: over the folds (each fold weighs the same; std is the sample standard deviation, n - 1)",
             f"- {how}" if pooled is not None else "- pooled: not available (no per-case rows for this task)",
             "- per-case rows of every test fold: cv_predictions.csv; this table: cv_metrics.csv",
             "- an ensemble of the folds is for new data: `medssm evaluate --checkpoint <this folder>` with the data "
             "overridden to another folder or split", "",
             "| metric | mean ± std | pooled | " + " | ".join(f"fold {i}" for i in range(folds)) + " |",
             "|---|---|---|" + "---|" * folds]
    for key in keys:
        values = [metrics.get(key, math.nan) for metrics in result["metrics"]]
        shown = _fmt(pooled.get(key)) if pooled is not None else "-"
        lines.append(f"| {key} | {_fmt(result['mean'][key])} ± {_fmt(result['std'][key])} | {shown} | "
                     + " | ".join(_fmt(v) for v in values) + " |")
    return "\n".join(lines) + "\n"
