"""UCR text files: parsing, label mapping, clear errors, and the real ECG200 when present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medssm.data import UCRDataset

ECG200 = Path(__file__).resolve().parents[3] / "shared" / "data" / "ecg" / "ucr_ecg200"


def test_parse_and_map_labels(tmp_path):
    path = tmp_path / "X_TRAIN.txt"
    path.write_text(" -1  1.0 2.0 3.0\n 1 4.0 5.0 6.0\n\n -1,7,8,9\n")
    ds = UCRDataset(path)
    assert len(ds) == 3 and ds.classes == [-1.0, 1.0]
    series, label = ds[1]
    assert series.shape == (1, 3) and torch.equal(series, torch.tensor([[4.0, 5.0, 6.0]]))
    assert ds.labels.tolist() == [0, 1, 0]
    normed = UCRDataset(path, normalize=True)
    torch.testing.assert_close(normed[0][0].mean(), torch.tensor(0.0))


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        UCRDataset(tmp_path / "nope.txt")
    ragged = tmp_path / "ragged.txt"
    ragged.write_text("1 2 3\n1 2\n")
    with pytest.raises(ValueError, match=r"ragged.txt: rows must .* row lengths \[2, 3\]"):
        UCRDataset(ragged)
    text = tmp_path / "text.txt"
    text.write_text("1 2 3\n1 x 3\n")
    with pytest.raises(ValueError, match="text.txt, line 2"):
        UCRDataset(text)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no series"):
        UCRDataset(empty)
    labels = tmp_path / "labels.txt"
    labels.write_text("3 1 2\n")
    with pytest.raises(ValueError, match=r"labels \[3.0\] are not among"):
        UCRDataset(labels, classes=[-1.0, 1.0])


@pytest.mark.skipif(not ECG200.exists(), reason="shared ECG200 data not present")
def test_real_ecg200():
    train = UCRDataset(ECG200 / "ECG200_TRAIN.txt")
    test = UCRDataset(ECG200 / "ECG200_TEST.txt", classes=train.classes)
    assert len(train) == 100 and len(test) == 100 and train.classes == [-1.0, 1.0]
    assert train[0][0].shape == (1, 96)
