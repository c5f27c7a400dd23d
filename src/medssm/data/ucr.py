"""UCR time-series archive files: one series per line, the class label first, then the values.

Whitespace-, tab- or comma-separated (the 2015 archive ships ``.txt``, the 2018 archive ``.tsv``). Labels
are mapped to 0..K-1 in sorted order of the raw values (ECG200's -1/1 become 0/1), and the mapping is kept
in ``classes``.

``path`` is either one file (all its rows, whatever ``split`` says) or an archive folder holding
``<Name>_TRAIN`` and ``<Name>_TEST`` (``.txt`` or ``.tsv``): then "test" is the TEST file, and "train" and
"val" are a seeded split of the TRAIN file (``val_fraction``, ``seed``), with classes taken from TRAIN so
that every split agrees.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .splits import check_split, require_nonempty, split_indices

UCR_SUFFIXES = (".tsv", ".txt")


class UCRDataset(Dataset):
    """UCR series: items {"image": float32 (1, L), "label": int64 scalar, "name": "<file stem>:<row>"}.

    Args:
        path: a ``*_TRAIN`` / ``*_TEST`` file, or an archive folder holding both.
        split: "train", "val" or "test" (used with a folder; a single file is read whole).
        classes: the raw label values in class order; default: the sorted values of the (TRAIN) file. With
            single files, pass the training file's ``classes`` to the test set so both agree.
        normalize: z-normalise each series (the archive's series are mostly already z-normalised).
        name: the dataset name in a folder holding several (``ECG200`` for ``ECG200_TRAIN.tsv``).
        val_fraction, seed: the validation rows carved from the TRAIN file of a folder.
        transform: callable applied to the item dict.
    """

    task = "classification"
    spatial_dims = 1
    in_channels = 1

    def __init__(self, path: str | Path, split: str = "train", classes: list[float] | None = None,
                 normalize: bool = False, name: str | None = None, val_fraction: float = 0.2, seed: int = 0,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.path, self.split, self.transform = Path(path), check_split(split), transform
        if self.path.is_dir():
            train_file, test_file = find_archive_files(self.path, name)
            train_labels, train_series = read_ucr_file(train_file)
            self.classes = _classes(train_labels, classes)
            if split == "test":
                self.file = test_file
                raw_labels, series = read_ucr_file(test_file)
                rows = np.arange(len(raw_labels))
            else:
                self.file, raw_labels, series = train_file, train_labels, train_series
                rows = split_indices(len(raw_labels), val_fraction, 0.0, seed)[split]
                require_nonempty(rows, split, self.path, f"{len(raw_labels)} rows, val_fraction={val_fraction}")
        else:
            self.file = self.path
            raw_labels, series = read_ucr_file(self.path)
            self.classes = _classes(raw_labels, classes)
            rows = np.arange(len(raw_labels))
        unknown = sorted(set(raw_labels[rows].tolist()) - set(self.classes))
        if unknown:
            raise ValueError(f"{self.file}: labels {unknown} are not among the declared classes {self.classes}")
        series = series[rows]
        if normalize:
            std = series.std(axis=1, keepdims=True)
            series = (series - series.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1)
        self.rows = rows
        self.series = torch.from_numpy(np.ascontiguousarray(series, dtype=np.float32)).unsqueeze(1)  # (N, 1, L)
        self.labels = torch.tensor([self.classes.index(v) for v in raw_labels[rows].tolist()], dtype=torch.int64)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {"image": self.series[index], "label": self.labels[index],
                "name": f"{self.file.stem}:{int(self.rows[index])}"}
        return self.transform(item) if self.transform is not None else item


def read_ucr_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(raw labels (N,) float64, series (N, L) float32) of a UCR text file; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"UCR file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append([float(v) for v in line.replace(",", " ").split()])
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: not a row of numbers ({err})") from None
    if not rows:
        raise ValueError(f"{path}: no series in the file")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1 or min(lengths) < 2:
        raise ValueError(f"{path}: rows must all hold a label and the same number of values; "
                         f"found row lengths {sorted(lengths)}")
    data = np.asarray(rows, dtype=np.float64)
    return data[:, 0], data[:, 1:].astype(np.float32)


def find_archive_files(folder: Path, name: str | None = None) -> tuple[Path, Path]:
    """The ``<Name>_TRAIN`` and ``<Name>_TEST`` files (.tsv preferred over .txt) of a UCR archive folder."""
    trains = sorted({p.name[: -len("_TRAIN" + p.suffix)] for p in folder.iterdir()
                     if p.suffix in UCR_SUFFIXES and p.stem.endswith("_TRAIN")})
    if name is None:
        if len(trains) != 1:
            raise ValueError(f"{folder}: expected one <Name>_TRAIN.tsv/.txt file, found datasets {trains}; "
                             f"pass name=")
        name = trains[0]
    found = []
    for part in ("TRAIN", "TEST"):
        candidates = [folder / f"{name}_{part}{suffix}" for suffix in UCR_SUFFIXES]
        existing = [p for p in candidates if p.is_file()]
        if not existing:
            raise FileNotFoundError(f"{folder}: no {name}_{part}.tsv or {name}_{part}.txt")
        found.append(existing[0])
    return found[0], found[1]


def _classes(raw_labels: np.ndarray, classes: list[float] | None) -> list[float]:
    if classes is not None:
        return [float(c) for c in classes]
    return sorted(set(raw_labels.tolist()))
