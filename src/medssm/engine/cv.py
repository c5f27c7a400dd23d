"""``medssm cv``: k-fold cross-validation as nnU-Net runs it, resumable fold by fold.

``cross_validate(config, out_dir, folds=K)`` trains fold 0..K-1 of ``config``'s data set into
``out_dir/fold_<i>`` (the config with ``data.args.fold=i``, ``data.args.num_folds=K`` and, where the config
sets one, ``data.args.test_fraction=0``: fold i is the test split, val is carved from the other folds), scores
each fold's best checkpoint on its own test fold (``fold_<i>/eval-test``), and when every fold is scored
writes the aggregate (:mod:`medssm.engine.cv_report`): ``cv_metrics.csv``, ``cv_summary.md`` and
``cv_predictions.csv``.

A cross-validation folder holds ``cv.json`` (the config and the number of folds). Running the same command
again continues where it stopped: a trained fold (its ``val_metrics.json`` exists) is skipped, a fold with a
checkpoint resumes from it with the trainer's exact resumption, a scored fold is not scored again; another
config or number of folds is refused (``overwrite`` starts again). The folds are seeded
(:func:`medssm.data.kfold_split`) and each fold's run folder saves its cases in ``splits.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.build import foldable_datasets
from .config import Config, config_from_dict
from .cv_report import EVAL_DIR, aggregate
from .evaluate import evaluate
from .files import write_text_atomic
from .folds import CV_FILE, fold_dir, is_cv_folder
from .setup import has_checkpoint
from .trainer import train

logger = logging.getLogger(__name__)

# Keys that may differ between the runs of one cross-validation (where it runs, not what it computes).
_FREE_KEYS = ("train.device", "train.num_workers")


def fold_config(config: Config, fold: int, num_folds: int) -> Config:
    """``config`` with fold ``fold`` of ``num_folds`` as its test split (``data.args``; a ``test_fraction`` the
    config sets becomes 0, since the fold is the test split)."""
    raw = config.to_dict()
    args = raw["data"]["args"]
    args.update(fold=fold, num_folds=num_folds)
    if "test_fraction" in args:
        args["test_fraction"] = 0.0
    return config_from_dict(raw, f"fold {fold} of the cross-validation config")


def cross_validate(config: Config, out_dir: str | Path, folds: int, fold: int | None = None, overwrite: bool = False,
                   progress: bool = True, device: str | None = None,
                   echo: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Train and score the folds of ``config`` in ``out_dir`` (all of them, or only ``fold``) and write the
    aggregate once every fold is scored; returns it (see :func:`medssm.engine.cv_report.aggregate`), or None
    while folds are missing.

    ``overwrite``: start again (with ``fold``: that fold only). ``device``: as for :func:`train`. ``echo``: where
    the progress lines go (which fold runs, skipped, resumed); the CLI prints them. Raises ValueError for a
    data set without folds, bad fold numbers, or an ``out_dir`` holding another cross-validation.
    """
    echo = echo or logger.info
    _check_arguments(config, folds, fold)
    out_dir = Path(out_dir)
    _prepare(out_dir, config, folds, fold, overwrite)
    for i in range(folds) if fold is None else [fold]:
        run = fold_dir(out_dir, i)
        where = f"fold {i} ({i + 1} of {folds})"
        if (run / "val_metrics.json").is_file():
            echo(f"{where}: trained already, skipped ({run})")
        elif has_checkpoint(run):
            echo(f"{where}: resuming {run} from its last checkpoint")
            train(None, run, resume=True, progress=progress, device=device)
        else:
            echo(f"{where}: training -> {run}")
            train(fold_config(config, i, folds), run, progress=progress, device=device)
        _evaluate_fold(run, where, progress, device, echo)
    scored = [i for i in range(folds) if (fold_dir(out_dir, i) / EVAL_DIR).is_dir()]
    if len(scored) < folds:
        missing = sorted(set(range(folds)) - set(scored))
        echo(f"{len(scored)} of {folds} folds scored (missing {missing}); the aggregate is written when all are")
        return None
    result = aggregate(out_dir, folds)
    echo(f"cross-validation of {folds} folds: {out_dir / 'cv_summary.md'}")
    return result


def _check_arguments(config: Config, folds: int, fold: int | None) -> None:
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"--folds must be an integer >= 2, got {folds!r}")
    if fold is not None and not 0 <= fold < folds:
        raise ValueError(f"--fold must be in 0..{folds - 1}, got {fold}")
    if config.data.name not in foldable_datasets():
        raise ValueError(f"dataset {config.data.name!r} takes no fold/num_folds (it keeps its official splits); "
                         f"cross-validation runs on {foldable_datasets()}")


def _prepare(out_dir: Path, config: Config, folds: int, fold: int | None, overwrite: bool) -> None:
    """Create the cross-validation folder, or check that the one there is this config's (see the module doc)."""
    record = {"folds": folds, "config": config.to_dict()}
    if out_dir.exists() and any(out_dir.iterdir()):
        if not is_cv_folder(out_dir):
            raise FileExistsError(f"{out_dir} is not empty and holds no {CV_FILE}: not a medssm cv folder; "
                                  "choose another --out")
        saved = json.loads((out_dir / CV_FILE).read_text())
        if overwrite and fold is None:
            shutil.rmtree(out_dir)
        else:
            problems = _config_differences(saved, record)
            if problems:
                raise ValueError(f"{out_dir} holds a cross-validation of another config ({'; '.join(problems)}); "
                                 "rerun with the same config and overrides, or pass --overwrite (without "
                                 "--fold) to start again")
            if overwrite:
                shutil.rmtree(fold_dir(out_dir, fold), ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / CV_FILE, json.dumps(record, indent=1) + "\n")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings that differ between two ``cv.json`` records, as "key: saved -> now"."""
    problems = [f"folds: {saved['folds']} -> {now['folds']}"] if saved["folds"] != now["folds"] else []
    before, after = _flatten(saved["config"]), _flatten(now["config"])
    for key in sorted(set(before) | set(after)):
        if key not in _FREE_KEYS and before.get(key) != after.get(key):
            problems.append(f"{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return problems


def _evaluate_fold(run: Path, where: str, progress: bool, device: str | None, echo: Callable[[str], None]) -> None:
    """Score the fold's best checkpoint on its test split into ``run/eval-test`` (written under a temporary
    name and renamed when complete, so that a report that exists is whole)."""
    report = run / EVAL_DIR
    if report.is_dir():
        echo(f"{where}: scored already ({report})")
        return
    partial = run / f".{EVAL_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    echo(f"{where}: scoring the best checkpoint on the fold's test split")
    evaluate(run / "checkpoints" / "best", partial, overwrite=True, device=device or "auto", progress=progress)
    partial.rename(report)
