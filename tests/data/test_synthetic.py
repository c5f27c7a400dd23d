"""SyntheticSegmentation: deterministic per (seed, split, index), learnable, and follows the item contract."""

from __future__ import annotations

import pytest
import torch
from data_checks import check_batches

from medssm.data import SyntheticSegmentation


def test_deterministic_and_different_per_split_and_seed():
    a = SyntheticSegmentation(4, split="train")[2]
    assert torch.equal(a["image"], SyntheticSegmentation(4, split="train")[2]["image"])
    assert not torch.equal(a["label"], SyntheticSegmentation(4, split="val")[2]["label"])
    assert not torch.equal(a["label"], SyntheticSegmentation(4, split="train", seed=1)[2]["label"])
    assert not torch.equal(a["label"], SyntheticSegmentation(4, split="train")[1]["label"])
    assert a["name"] == "train_2"


def test_2d_binary_objects_are_learnable():
    ds = SyntheticSegmentation(8, (64, 64), noise=0.3)
    assert (ds.task, ds.spatial_dims, ds.in_channels, ds.num_classes) == ("segmentation", 2, 1, 2)
    batch = check_batches(ds, batch_size=8)
    image, label = batch["image"], batch["label"]
    assert image.shape == (8, 1, 64, 64) and label.shape == (8, 1, 64, 64)
    assert image.min() >= 0 and image.max() <= 1
    foreground = label.float().mean().item()
    assert 0.03 < foreground < 0.5  # a few discs of radius up to size/6, not empty, not everything
    # Objects are brighter than the noise: a fixed threshold already segments them well.
    predicted = image > image[label == 0].max() * 0.999
    dice = 2 * (predicted & (label == 1)).sum() / (predicted.sum() + (label == 1).sum())
    assert dice > 0.9


def test_3d_multiclass_multichannel():
    ds = SyntheticSegmentation(2, (24, 20, 16), num_classes=3, in_channels=2, split="test")
    item = ds[0]
    assert item["image"].shape == (2, 24, 20, 16) and item["label"].shape == (1, 24, 20, 16)
    assert set(item["label"].unique().tolist()) <= {0, 1, 2} and int(item["label"].max()) >= 1
    assert not torch.equal(item["image"][0], item["image"][1])  # channels differ in their noise
    batch = check_batches(ds)
    image, label = batch["image"][:, 0], batch["label"][:, 0]
    assert image[label == 2].mean() > image[label == 1].mean() > image[label == 0].mean()  # class k at intensity k


def test_errors():
    with pytest.raises(ValueError, match="spatial_size must be 2 or 3 sizes"):
        SyntheticSegmentation(spatial_size=(8, 8))
    with pytest.raises(ValueError, match="num_classes >= 2"):
        SyntheticSegmentation(num_classes=1)
    with pytest.raises(ValueError, match="noise must be in"):
        SyntheticSegmentation(noise=1.5)
    with pytest.raises(ValueError, match="split must be one of"):
        SyntheticSegmentation(split="all")
    with pytest.raises(IndexError):
        SyntheticSegmentation(2)[2]


def test_folds_split_one_pool_of_cases():
    """With num_folds, each split is a part of one pool: a case is the same item whichever split holds it."""
    splits = {split: SyntheticSegmentation(10, spatial_size=(16, 16), split=split, fold=1, num_folds=3)
              for split in ("train", "val", "test")}
    names = {split: [item["name"] for item in data] for split, data in splits.items()}
    assert names == {split: data.cases for split, data in splits.items()}
    assert sorted(sum(names.values(), [])) == sorted(f"case_{i}" for i in range(10))
    assert len(names["test"]) in (3, 4) and len(names["val"]) == 1
    other = SyntheticSegmentation(10, spatial_size=(16, 16), split="train", fold=0, num_folds=3)
    shared = sorted(set(names["train"]) & set(other.cases))
    assert shared
    first = splits["train"][names["train"].index(shared[0])]
    assert torch.equal(first["image"], other[other.cases.index(shared[0])]["image"])
    with pytest.raises(ValueError, match="fold=1 needs num_folds"):
        SyntheticSegmentation(10, fold=1)
