"""SliceStack: numbered 2D slices read as one volume, split into contiguous slabs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medssm.data import build_dataset
from medssm.data.slices import SliceStack, numbered_files

ISBI = Path(__file__).resolve().parents[3] / "shared" / "data" / "isbi2012_em_membrane"
SLABS = {"train": [0, 5], "val": [6, 7], "test": [8, 10]}


def write_stack(root: Path, count: int = 11, size: tuple[int, int] = (9, 13)) -> np.ndarray:
    """``count`` grey slices named 0..count-1 (not zero-padded) with 0/255 masks; returns the image volume."""
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 256, (count, *size), dtype=np.uint8)
    (root / "image").mkdir(parents=True)
    (root / "label").mkdir()
    for z in range(count):
        Image.fromarray(volume[z]).save(root / "image" / f"{z}.png")
        Image.fromarray(np.where(volume[z] > 127, 255, 0).astype(np.uint8)).save(root / "label" / f"{z}.png")
    return volume


def test_slices_are_stacked_in_numeric_order_and_split_into_slabs(tmp_path):
    volume = write_stack(tmp_path)
    names = [p.name for p in numbered_files(tmp_path / "image", "image")]
    assert names[:3] == ["0.png", "1.png", "2.png"] and names[-1] == "10.png"  # 10 after 9, not after 1
    test = build_dataset("slices", "test", root=tmp_path, images="image", masks="label", slices=SLABS)
    assert len(test) == 1 and test.cases == ["slices_8-10"] and test.in_channels == 1
    item = test[0]
    assert item["image"].shape == (1, 3, 9, 13) and item["label"].shape == (1, 3, 9, 13)
    np.testing.assert_allclose(item["image"][0].numpy(), volume[8:11] / 255.0, atol=1e-7)
    assert np.array_equal(item["label"][0].numpy(), (volume[8:11] > 127).astype(np.int64))
    train = SliceStack(tmp_path, SLABS, "train", images="image", masks="label", train_repeats=4)
    assert len(train) == 4 and train[3]["image"].shape == (1, 6, 9, 13)


def test_slice_stack_errors(tmp_path):
    write_stack(tmp_path)
    kwargs = {"root": tmp_path, "images": "image", "masks": "label"}
    with pytest.raises(ValueError, match="slice 6 is in both the 'train' and 'val' ranges"):
        SliceStack(slices={"train": [0, 6], "val": [6, 7]}, **kwargs)
    with pytest.raises(ValueError, match=r"0 <= first <= last < 11"):
        SliceStack(slices={"train": [0, 11]}, **kwargs)
    with pytest.raises(ValueError, match="no range for the 'test' split"):
        SliceStack(slices={"train": [0, 3]}, split="test", **kwargs)
    with pytest.raises(ValueError, match="keys must be among"):
        SliceStack(slices={"training": [0, 3]}, **kwargs)
    (tmp_path / "label" / "10.png").unlink()
    with pytest.raises(ValueError, match="11 image slices but 10 mask slices"):
        SliceStack(slices=SLABS, **kwargs)


@pytest.mark.skipif(not ISBI.is_dir(), reason="ISBI-2012 data not present")
def test_isbi2012_slabs():
    test = SliceStack(ISBI, {"train": [0, 19], "val": [20, 24], "test": [25, 29]}, "test", images="image",
                      masks="label")
    item = test[0]
    assert item["image"].shape == (1, 5, 512, 512)
    assert set(np.unique(item["label"].numpy()).tolist()) == {0, 1}
