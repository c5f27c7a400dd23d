"""MedMNIST npz loading: 2D grey, 2D RGB, 3D, multi-label; each broken input gives its clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_checks import check_batches

from medssm.data import MedMNIST

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "medmnist"


def write_npz(path: Path, images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> Path:
    np.savez(path, **{f"{s}_images": v for s, v in images.items()}, **{f"{s}_labels": v for s, v in labels.items()})
    return path


def fake(tmp_path: Path, image_shape: tuple[int, ...], label_cols: int = 1, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, (n, *image_shape), dtype=np.uint8) for s in ("train", "val", "test")}
    labels = {s: rng.integers(0, 2, (n, label_cols)) for s in ("train", "val", "test")}
    return write_npz(tmp_path / "fake.npz", images, labels)


@pytest.mark.parametrize(("image_shape", "expected"), [((28, 28), (1, 28, 28)), ((17, 9, 3), (3, 17, 9)),
                                                        ((8, 12, 10), (1, 8, 12, 10))])
def test_shapes_and_ranges(tmp_path, image_shape, expected):
    ds = MedMNIST(fake(tmp_path, image_shape), "val")
    item = ds[2]
    image, label = item["image"], item["label"]
    assert image.shape == expected and image.dtype == torch.float32 and item["name"] == "val_2"
    assert (ds.task, ds.spatial_dims, ds.in_channels, ds.num_classes) == ("classification", len(expected) - 1,
                                                                          expected[0], 2)
    assert 0 <= image.min() and image.max() <= 1
    raw = torch.from_numpy(np.load(ds.path)["val_images"][2] / 255.0).float()
    want = raw.movedim(-1, 0) if expected[0] == 3 else raw.unsqueeze(0)  # RGB (H, W, 3) -> (3, H, W)
    torch.testing.assert_close(image, want)
    assert label.dtype == torch.int64 and label.dim() == 0
    batch = check_batches(ds, batch_size=4)
    assert batch["image"].shape == (4, *expected) and batch["label"].shape == (4,)


def test_multi_label(tmp_path):
    ds = MedMNIST(fake(tmp_path, (28, 28), label_cols=14), "train")
    label = ds[0]["label"]
    assert ds.multi_label and label.shape == (14,) and label.dtype == torch.float32
    assert ds.task == "multilabel" and ds.num_classes == 14
    torch.testing.assert_close(label, torch.from_numpy(np.load(ds.path)["train_labels"][0]).float())
    assert check_batches(ds)["label"].shape == (2, 14)


def test_num_classes_from_every_split_and_transform(tmp_path):
    images = {s: np.zeros((2, 4, 4), np.uint8) for s in ("train", "val", "test")}
    labels = {"train": np.array([[0], [1]]), "val": np.array([[0], [0]]), "test": np.array([[4], [2]])}
    path = write_npz(tmp_path / "classes.npz", images, labels)
    assert MedMNIST(path, "val").num_classes == 5  # the test split holds class 4
    assert MedMNIST(path, "val", num_classes=7).num_classes == 7
    flipped = MedMNIST(path, "test", transform=lambda item: {**item, "image": 1 - item["image"]})
    assert torch.equal(flipped[0]["image"], torch.ones(1, 4, 4)) and int(flipped[0]["label"]) == 4


def test_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        MedMNIST(tmp_path / "missing.npz")
    good = fake(tmp_path, (28, 28))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.npz.*not a readable"):
        MedMNIST(truncated)
    one_image = {"train": np.zeros((2, 4, 4), np.uint8)}
    no_val = write_npz(tmp_path / "no_val.npz", one_image, {"train": np.zeros((2, 1))})
    with pytest.raises(ValueError, match=r"missing \['val_images', 'val_labels'\]"):
        MedMNIST(no_val, "val")
    mismatch = write_npz(tmp_path / "mismatch.npz", {"train": np.zeros((3, 4, 4), np.uint8)},
                         {"train": np.zeros((2, 1))})
    with pytest.raises(ValueError, match="holds 3 images"):
        MedMNIST(mismatch)
    empty = write_npz(tmp_path / "empty.npz", {"train": np.zeros((0, 4, 4), np.uint8)}, {"train": np.zeros((0, 1))})
    with pytest.raises(ValueError, match="train split is empty"):
        MedMNIST(empty)
    out_of_range = write_npz(tmp_path / "classes.npz", one_image, {"train": np.array([[0], [5]])})
    with pytest.raises(ValueError, match=r"\[5\], outside the declared classes 0..1"):
        MedMNIST(out_of_range, num_classes=2)
    with pytest.raises(ValueError, match="split must be one of"):
        MedMNIST(good, "validation")


@pytest.mark.skipif(not (SHARED / "breastmnist.npz").exists(), reason="shared MedMNIST data not present")
def test_real_breastmnist_and_adrenalmnist3d():
    sizes = {s: len(MedMNIST(SHARED / "breastmnist.npz", s, num_classes=2)) for s in ("train", "val", "test")}
    assert sizes == {"train": 546, "val": 78, "test": 156}
    item = MedMNIST(SHARED / "breastmnist.npz", "test")[0]
    assert item["image"].shape == (1, 28, 28) and int(item["label"]) in (0, 1)
    vol = MedMNIST(SHARED / "adrenalmnist3d.npz", "val", num_classes=2)
    assert len(vol) == 98 and vol.spatial_dims == 3 and vol[0]["image"].shape == (1, 28, 28, 28)
    assert check_batches(vol)["image"].shape == (2, 1, 28, 28, 28)
