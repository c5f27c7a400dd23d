"""Train/val/test splits: seeded fractions of a sorted case list, or a JSON split file.

A split depends only on the set of case names, the fractions and the seed (never on file-system order), so
the same folder gives the same split on every machine. Datasets call :func:`select_cases` to pick the cases
of one split and get a clear error when that split is empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .io import read_json

SPLITS = ("train", "val", "test")


def check_split(split: str) -> str:
    """Return ``split`` if it is "train", "val" or "test"; ValueError otherwise."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """How many of ``n`` items go to val and to test: rounded, at least one for a positive fraction while
    another split keeps at least one item."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if val_fraction + test_fraction > 1.0 + 1e-9:
        raise ValueError(f"val_fraction + test_fraction must be at most 1, got {val_fraction} + {test_fraction}")
    n_test = int(n * test_fraction + 0.5)  # round half up, not to even
    if test_fraction > 0 and n_test == 0 and n >= 2:
        n_test = 1
    n_val = min(int(n * val_fraction + 0.5), n - n_test)
    if val_fraction > 0 and n_val == 0 and n - n_test >= 2:
        n_val = 1
    if val_fraction + test_fraction < 1.0 and n_val + n_test == n and n > 0:
        # Keep one training item whenever the fractions leave room for training.
        if n_val > 0:
            n_val -= 1
        elif n_test > 0:
            n_test -= 1
    return n_val, n_test


def split_indices(n: int, val_fraction: float = 0.2, test_fraction: float = 0.0,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random partition of ``range(n)`` into {"train", "val", "test"} index arrays (each sorted)."""
    n_val, n_test = split_counts(n, val_fraction, test_fraction)
    order = np.random.default_rng(seed).permutation(n)
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    return {split: np.sort(parts[split]) for split in SPLITS}


def seeded_split(names: Sequence[str], val_fraction: float = 0.2, test_fraction: float = 0.0,
                 seed: int = 0) -> dict[str, list[str]]:
    """Split case names into {"train": [...], "val": [...], "test": [...]}, each list sorted.

    The names are sorted first, so the result depends only on the set of names, the fractions and the seed.
    Duplicate names are an error.
    """
    ordered = sorted(names)
    duplicates = sorted({name for name, following in zip(ordered, ordered[1:], strict=False) if name == following})
    if duplicates:
        raise ValueError(f"duplicate case names {duplicates[:10]}; every case needs a unique name")
    indices = split_indices(len(ordered), val_fraction, test_fraction, seed)
    return {split: [ordered[i] for i in indices[split]] for split in SPLITS}


def kfold_split(names: Sequence[str], fold: int, num_folds: int, val_fraction: float = 0.2,
                seed: int = 0) -> dict[str, list[str]]:
    """Fold ``fold`` of a seeded ``num_folds``-fold partition of the case names as the test split; the val split
    is ``val_fraction`` of the remaining cases (seeded), the rest is train. Each list sorted.

    Ilse et al.'s MIL protocol and leave-subjects-out evaluation: every case is tested exactly once over the
    folds, and model selection uses a validation split carved from the training folds only. The partition
    depends only on the set of names, ``num_folds`` and ``seed`` (fold sizes differ by at most one).
    """
    if not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds must be an integer >= 2, got {num_folds!r}")
    if not isinstance(fold, int) or not 0 <= fold < num_folds:
        raise ValueError(f"fold must be an integer in 0..{num_folds - 1}, got {fold!r}")
    ordered = sorted(names)
    if len(ordered) < num_folds:
        raise ValueError(f"{num_folds} folds need at least {num_folds} cases, got {len(ordered)}")
    order = np.random.default_rng(seed).permutation(len(ordered))
    test = set(np.array_split(order, num_folds)[fold].tolist())
    rest = [name for i, name in enumerate(ordered) if i not in test]
    inner = seeded_split(rest, val_fraction, 0.0, seed)
    return {"train": inner["train"], "val": inner["val"], "test": sorted(ordered[i] for i in test)}


def load_split_file(path: str | Path, fold: int | None = None) -> dict[str, list[str]]:
    """Read a JSON split file: {"train": [...], "val": [...], "test": [...]} (any of the keys may be absent).

    nnU-Net's ``splits_final.json`` (a list of {"train", "val"} folds) is read too when ``fold`` is given.
    Missing splits come back as empty lists; a case listed in two splits is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    data = read_json(path)
    if isinstance(data, list):
        if fold is None:
            raise ValueError(f"{path}: holds {len(data)} folds (nnU-Net splits_final.json); "
                             f"pass fold=0..{len(data) - 1}")
        if not 0 <= fold < len(data):
            raise ValueError(f"{path}: fold {fold} requested but the file holds folds 0..{len(data) - 1}")
        data = data[fold]
    if not isinstance(data, dict) or not set(data) <= set(SPLITS):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a JSON object with keys among {list(SPLITS)}, found {found}")
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        names = data.get(split, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: {split!r} must be a list of case names (strings)")
        splits[split] = list(names)
    seen: dict[str, str] = {}
    for split, names in splits.items():
        for name in names:
            if name in seen:
                raise ValueError(f"{path}: case {name!r} is listed in both {seen[name]!r} and {split!r}")
            seen[name] = split
    return splits


def select_cases(names: Sequence[str], split: str, root: str | Path, split_file: str | Path | None = None,
                 val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0,
                 fold: int | None = None, num_folds: int | None = None) -> list[str]:
    """The sorted case names of ``split``: from ``split_file`` if given (``fold`` picks a fold of an nnU-Net
    splits file), else fold ``fold`` of a :func:`kfold_split` when ``num_folds`` is given (``test_fraction``
    must then be 0: the test split is the fold), else a :func:`seeded_split`.

    Raises ValueError naming ``root`` when the split is empty, and when the split file names cases that are
    not among ``names``.
    """
    check_split(split)
    if split_file is not None:
        listed = load_split_file(split_file, fold)
        unknown = sorted(set(listed[split]) - set(names))
        if unknown:
            raise ValueError(f"{split_file}: the {split!r} split names cases not found in {root}: {unknown[:10]}")
        chosen = sorted(listed[split])
        how = f"split file {split_file}"
    elif num_folds is not None:
        if test_fraction > 0:
            raise ValueError(f"{root}: num_folds={num_folds} makes fold {fold} the test split; "
                             f"test_fraction must be 0, got {test_fraction}")
        chosen = kfold_split(names, 0 if fold is None else fold, num_folds, val_fraction, seed)[split]
        how = f"fold {fold} of {num_folds}, val_fraction={val_fraction}"
    else:
        chosen = seeded_split(names, val_fraction, test_fraction, seed)[split]
        how = f"val_fraction={val_fraction}, test_fraction={test_fraction}"
    require_nonempty(chosen, split, root, f"{len(names)} cases, {how}")
    return chosen


def require_nonempty(items: Sequence[object], split: str, root: str | Path, detail: str = "") -> None:
    """ValueError naming the dataset root and the split when ``items`` is empty."""
    if len(items) == 0:
        extra = f" ({detail})" if detail else ""
        raise ValueError(f"{root}: the {split!r} split is empty{extra}")


def check_split_mapping(mapping: Mapping[str, object], what: str) -> None:
    """ValueError when a per-split mapping (e.g. ``split_records``) has keys other than train/val/test."""
    unknown = sorted(set(mapping) - set(SPLITS))
    if unknown:
        raise ValueError(f"{what} keys must be among {list(SPLITS)}, got {unknown}")
