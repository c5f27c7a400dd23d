"""UCR text files and archive folders: parsing, label mapping, splits, clear errors, the real ECG200."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_checks import check_batches

from medssm.data import UCRDataset

ECG200 = Path(__file__).resolve().parents[3] / "shared" / "data" / "ecg" / "ucr_ecg200"


def test_parse_and_map_labels(tmp_path):
    path = tmp_path / "X_TRAIN.txt"
    path.write_text(" -1  1.0 2.0 3.0\n 1 4.0 5.0 6.0\n\n -1,7,8,9\n")
    ds = UCRDataset(path)
    assert len(ds) == 3 and ds.classes == [-1.0, 1.0]
    assert (ds.task, ds.spatial_dims, ds.in_channels, ds.num_classes) == ("classification", 1, 1, 2)
    item = ds[1]
    assert item["image"].shape == (1, 3) and torch.equal(item["image"], torch.tensor([[4.0, 5.0, 6.0]]))
    assert item["label"].dtype == torch.int64 and int(item["label"]) == 1 and item["name"] == "X_TRAIN:1"
    assert ds.labels.tolist() == [0, 1, 0]
    normed = UCRDataset(path, normalize=True)
    torch.testing.assert_close(normed[0]["image"].mean(), torch.tensor(0.0))
    batch = check_batches(ds, batch_size=3)
    assert batch["image"].shape == (3, 1, 3) and batch["label"].tolist() == [0, 1, 0]


def write_archive(folder: Path, name: str = "Toy", suffix: str = ".tsv", n_train: int = 10) -> None:
    folder.mkdir(exist_ok=True)
    rows = [f"{(i % 3) + 1}\t{i}\t{i + 1}\t{i * 2}" for i in range(n_train)]
    (folder / f"{name}_TRAIN{suffix}").write_text("\n".join(rows) + "\n")
    (folder / f"{name}_TEST{suffix}").write_text("3\t0\t0\t0\n1\t5\t5\t5\n")


def test_archive_folder_gives_train_val_test(tmp_path):
    write_archive(tmp_path / "Toy")
    train, val, test = (UCRDataset(tmp_path / "Toy", s, val_fraction=0.3, seed=1) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (7, 3, 2)
    assert sorted(train.rows.tolist() + val.rows.tolist()) == list(range(10))
    assert train.classes == val.classes == test.classes == [1.0, 2.0, 3.0]
    assert test.labels.tolist() == [2, 0] and test[1]["name"] == "Toy_TEST:1"
    row = int(val.rows[0])
    assert val[0]["image"].tolist() == [[row, row + 1, row * 2]]
    assert UCRDataset(tmp_path / "Toy", "val", val_fraction=0.3, seed=2).rows.tolist() != val.rows.tolist()
    check_batches(train)


def test_archive_folder_errors(tmp_path):
    write_archive(tmp_path, "A", ".txt")
    write_archive(tmp_path, "B", ".tsv")
    with pytest.raises(ValueError, match=r"found datasets \['A', 'B'\]; pass name="):
        UCRDataset(tmp_path)
    assert len(UCRDataset(tmp_path, "test", name="B")) == 2
    (tmp_path / "B_TEST.tsv").unlink()
    with pytest.raises(FileNotFoundError, match="no B_TEST.tsv or B_TEST.txt"):
        UCRDataset(tmp_path, "test", name="B")
    with pytest.raises(ValueError, match="the 'val' split is empty"):
        UCRDataset(tmp_path, "val", name="A", val_fraction=0)
    (tmp_path / "A_TEST.txt").write_text("7 1 2 3\n")
    with pytest.raises(ValueError, match=r"A_TEST.txt: labels \[7.0\] are not among the declared classes"):
        UCRDataset(tmp_path, "test", name="A")


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
    with pytest.raises(ValueError, match="split must be one of"):
        UCRDataset(labels, split="training")


@pytest.mark.skipif(not ECG200.exists(), reason="shared ECG200 data not present")
def test_real_ecg200():
    train = UCRDataset(ECG200 / "ECG200_TRAIN.txt")
    test = UCRDataset(ECG200 / "ECG200_TEST.txt", classes=train.classes)
    assert len(train) == 100 and len(test) == 100 and train.classes == [-1.0, 1.0]
    assert train[0]["image"].shape == (1, 96)
    # The folder (which also holds the ECG200.txt description) splits TRAIN into train/val.
    parts = {s: UCRDataset(ECG200, s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [80, 20, 100]
    assert torch.equal(parts["test"].labels, test.labels)
    assert int(parts["test"].labels.sum()) == 64  # ECG200 test: 64 normal (1), 36 myocardial infarction (-1)
