"""UCR time-series archive text files: one series per line, the class label first, then the values.

Whitespace- or comma-separated (the archive ships both). Labels are mapped to 0..K-1 in sorted order of
the raw values (ECG200's -1/1 become 0/1), and the mapping is kept in ``classes``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset


class UCRDataset(Dataset):
    """A UCR ``*_TRAIN.txt`` / ``*_TEST.txt`` file: items are (series (1, L) float32, label long).

    Args:
        path: the text file. classes: the raw label values in class order; default: the sorted values
            found in the file (pass the training file's ``classes`` to the test set so both agree).
        normalize: z-normalise each series (the archive's series are mostly already z-normalised).
    """

    def __init__(self, path: str | Path, classes: list[float] | None = None, normalize: bool = False) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"UCR file not found: {self.path}")
        rows = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append([float(v) for v in line.replace(",", " ").split()])
            except ValueError as err:
                raise ValueError(f"{self.path}, line {number}: not a row of numbers ({err})") from None
        if not rows:
            raise ValueError(f"{self.path}: no series in the file")
        lengths = {len(r) for r in rows}
        if len(lengths) != 1 or min(lengths) < 2:
            raise ValueError(f"{self.path}: rows must all hold a label and the same number of values; "
                             f"found row lengths {sorted(lengths)}")
        data = np.asarray(rows, dtype=np.float64)
        raw_labels, series = data[:, 0], data[:, 1:].astype(np.float32)
        self.classes = sorted(set(raw_labels.tolist())) if classes is None else list(classes)
        unknown = sorted(set(raw_labels.tolist()) - set(self.classes))
        if unknown:
            raise ValueError(f"{self.path}: labels {unknown} are not among the declared classes {self.classes}")
        if normalize:
            std = series.std(axis=1, keepdims=True)
            series = (series - series.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1)
        self.series = torch.from_numpy(series).unsqueeze(1)  # (N, 1, L)
        self.labels = torch.tensor([self.classes.index(v) for v in raw_labels.tolist()])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.series[index], self.labels[index]
