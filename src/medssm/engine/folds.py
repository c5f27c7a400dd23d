"""What a cross-validation records: the split a run used (``splits.json`` in every run folder) and the layout of
a cross-validation folder (``cv.json`` beside ``fold_0/``, ``fold_1/``, ...).

nnU-Net saves its folds (``splits_final.json``) so that a rerun, a resumed run or a reader of the results
sees the very cases each fold trained, validated and was tested on. A medssm run does the same per run
folder: ``splits.json`` holds the dataset, the fold and number of folds, each split's size and, where the
dataset exposes them (``dataset.cases``), the case names; a resumed run checks that the data still gives
the same split.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ..data import build_dataset
from ..data.build import foldable_datasets
from .config import Config
from .files import write_text_atomic
from .setup import case_names

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits.json"
CV_FILE = "cv.json"  # marks a cross-validation folder: its config and number of folds
FOLD_DIR = re.compile(r"^fold_(\d+)$")
ROLES = ("train", "val", "test")


def fold_dir(cv_dir: str | Path, fold: int) -> Path:
    """The run folder of fold ``fold`` in a cross-validation folder."""
    return Path(cv_dir) / f"fold_{fold}"


def is_cv_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``medssm cv`` (it holds ``cv.json``)."""
    return (Path(path) / CV_FILE).is_file()


def fold_dirs(cv_dir: str | Path) -> list[Path]:
    """The ``fold_<i>`` run folders of a cross-validation folder, in fold order."""
    found = [(int(m[1]), p) for p in Path(cv_dir).iterdir() if p.is_dir() and (m := FOLD_DIR.match(p.name))]
    return [path for _, path in sorted(found)]


def _split_entry(dataset: Any) -> dict[str, Any]:
    return {"size": len(dataset), "cases": case_names(dataset)}


def split_record(config: Config, datasets: dict[str, Any]) -> dict[str, Any]:
    """The ``splits.json`` of a run: ``datasets`` {"train": ..., "val": ...} (built already) and the config's
    test split, built here without transforms for the datasets whose splits are drawn (those that take folds);
    a test split that is not built (official, empty, absent) is recorded as null with the reason, since a run
    does not need it."""
    args = config.data.args
    record: dict[str, Any] = {"dataset": config.data.name, "fold": args.get("fold"),
                              "num_folds": args.get("num_folds"),
                              "split_names": {"train": config.data.train_split, "val": config.data.val_split,
                                              "test": config.data.test_split}}
    for role, dataset in datasets.items():
        record[role] = _split_entry(dataset)
    if "test" not in datasets and config.data.name not in foldable_datasets():
        # Official splits (MedMNIST, UCR, WFDB) are fixed by the files: not worth loading a test set for.
        record["test"], record["test_unavailable"] = None, f"the official test split of {config.data.name!r}"
    elif "test" not in datasets:
        try:
            record["test"] = _split_entry(build_dataset(config.data.name, split=config.data.test_split, **args))
        except (ValueError, FileNotFoundError) as error:
            record["test"], record["test_unavailable"] = None, str(error)
    return record


def save_or_check_splits(out_dir: Path, record: dict[str, Any], resume: bool, write: bool) -> None:
    """Write ``record`` as ``out_dir/splits.json`` (``write``: this process writes files); when resuming, first
    check it against the saved one and raise ValueError naming what changed (the data under the run moved)."""
    path = out_dir / SPLITS_FILE
    if resume and path.is_file():
        saved = json.loads(path.read_text())
        problems = _differences(saved, record)
        if problems:
            raise ValueError(f"{path}: the data gives another split than when this run started ("
                             + "; ".join(problems) + "); restore the data, or start a new run")
        return
    if resume:
        logger.info("%s: not found (a run from before splits were saved); writing it now", path)
    if write:
        write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two split records, one phrase per split (sizes, then added/removed cases)."""
    problems = []
    for key in ("dataset", "fold", "num_folds"):
        if saved.get(key) != now.get(key):
            problems.append(f"{key} was {saved.get(key)!r}, now {now.get(key)!r}")
    for role in ROLES:
        before, after = saved.get(role), now.get(role)
        if before is None or after is None:  # a test split the run does not need, then or now
            continue
        if before["cases"] is not None and after["cases"] is not None:
            added = sorted(set(after["cases"]) - set(before["cases"]))
            removed = sorted(set(before["cases"]) - set(after["cases"]))
            if added or removed:
                problems.append(f"the {role} split gained {added[:5]} and lost {removed[:5]}")
                continue
        if before["size"] != after["size"]:
            problems.append(f"the {role} split had {before['size']} cases, now {after['size']}")
    return problems
