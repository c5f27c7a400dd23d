"""ImageMaskFolder on folders written here (TIF/PNG/GIF, 0/255, palette and class-index masks, FOV masks)
and on the real DRIVE and ISBI-2012 folders when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from data_checks import check_batches
from PIL import Image

from medssm.data import ImageMaskFolder, read_mask

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
DRIVE = SHARED / "drive"
ISBI = SHARED / "isbi2012_em_membrane"
DRIVE_ARGS = {"masks": "1st_manual", "fov": "mask", "mask_suffix": "_manual1"}


def save_palette(path: Path, indices: np.ndarray) -> None:
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette([v for i in range(256) for v in (i, i, i)])
    image.save(path)


def drive_like(root: Path, n: int = 5, size: tuple[int, int] = (12, 10)) -> dict[str, np.ndarray]:
    """A DRIVE-shaped folder: RGB TIF images, 0/255 GIF vessel masks, 0/255 GIF field-of-view masks."""
    for name in ("images", "1st_manual", "mask"):
        (root / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(n):
        key = f"{21 + i}"
        rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        vessels = (rng.random(size) > 0.7).astype(np.uint8) * 255
        fov = np.zeros(size, np.uint8)
        fov[1:-1, 1:-1] = 255
        Image.fromarray(rgb).save(root / "images" / f"{key}_training.tif")
        Image.fromarray(vessels).save(root / "1st_manual" / f"{key}_manual1.gif")
        Image.fromarray(fov).save(root / "mask" / f"{key}_training_mask.gif")
        arrays[key] = rgb, vessels, fov
    return arrays


def test_drive_like_folder_pairs_files_and_maps_values(tmp_path):
    arrays = drive_like(tmp_path)
    args = {**DRIVE_ARGS, "image_suffix": "_training", "fov_suffix": "_training_mask"}
    train = ImageMaskFolder(tmp_path, "train", **args)
    val = ImageMaskFolder(tmp_path, "val", **args)
    assert len(train) == 4 and len(val) == 1 and not set(train.cases) & set(val.cases)
    assert sorted(train.cases + val.cases) == sorted(arrays)
    assert train.task == "segmentation" and train.spatial_dims == 2 and train.in_channels == 3
    assert train.num_classes == 2
    item = train[0]
    rgb, vessels, fov = arrays[item["name"]]
    torch.testing.assert_close(item["image"], torch.from_numpy(np.moveaxis(rgb, -1, 0) / 255.0).float())
    assert torch.equal(item["label"][0], torch.from_numpy(vessels // 255).long())
    assert torch.equal(item["fov"][0], torch.from_numpy(fov // 255))
    batch = check_batches(train, batch_size=3)
    assert batch["image"].shape == (3, 3, 12, 10) and batch["fov"].shape == (3, 1, 12, 10)


def test_whole_folder_as_test_split_and_split_file(tmp_path):
    drive_like(tmp_path)
    args = {**DRIVE_ARGS, "image_suffix": "_training", "fov_suffix": "_training_mask"}
    test = ImageMaskFolder(tmp_path, "test", val_fraction=0, test_fraction=1, **args)
    assert test.cases == ["21", "22", "23", "24", "25"]
    with pytest.raises(ValueError, match="the 'train' split is empty"):
        ImageMaskFolder(tmp_path, "train", val_fraction=0, test_fraction=1, **args)
    split_file = tmp_path / "split.json"
    split_file.write_text('{"train": ["21", "22"], "val": ["23"], "test": ["25"]}')
    assert ImageMaskFolder(tmp_path, "test", split_file=split_file, **args).cases == ["25"]


def test_palette_class_index_and_16_bit(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    image = (np.arange(48).reshape(6, 8) * 1000).astype(np.uint16)
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    classes = np.array([[0, 1, 2, 3] * 2] * 6, np.uint8)
    Image.fromarray(classes).save(tmp_path / "masks" / "a.png")
    ds = ImageMaskFolder(tmp_path, "train", val_fraction=0, num_classes=4)
    item = ds[0]
    assert ds.in_channels == 1
    torch.testing.assert_close(item["image"][0], torch.from_numpy(image / 65535.0).float())
    assert torch.equal(item["label"][0], torch.from_numpy(classes).long())
    with pytest.raises(ValueError, match=r"a.png: mask values \[0, 1, 2, 3\] .* classes \[2, 3\] outside 0..1"):
        ImageMaskFolder(tmp_path, "train", val_fraction=0, num_classes=2)[0]

    # A binary palette mask storing its foreground at index 251 (DRIVE's test/1st_manual/01_manual1.gif)
    palette = np.where(classes > 1, 251, 0)
    save_palette(tmp_path / "palette.gif", palette)
    assert np.array_equal(read_mask(tmp_path / "palette.gif", 2), (palette > 0).astype(np.int64))
    save_palette(tmp_path / "three.png", classes)  # a palette with 4 indices stays indices
    assert np.array_equal(read_mask(tmp_path / "three.png", 4), classes)
    with pytest.raises(ValueError, match="three.png: mask values"):
        read_mask(tmp_path / "three.png", 2)
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour.png: a colour mask"):
        read_mask(tmp_path / "colour.png", 2)
    Image.fromarray(np.full((4, 4, 3), 255, np.uint8)).save(tmp_path / "grey_as_rgb.png")
    assert read_mask(tmp_path / "grey_as_rgb.png", 2).tolist() == [[1] * 4] * 4


def test_lossy_jpeg_masks_need_a_threshold(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    yy, xx = np.mgrid[:32, :32]
    disc = np.repeat((((yy - 15.3) ** 2 + (xx - 17.1) ** 2 < 60) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    Image.fromarray(disc).save(tmp_path / "images" / "polyp.jpg")
    Image.fromarray(disc).save(tmp_path / "masks" / "polyp.jpg", quality=60)  # Kvasir-SEG style RGB JPEG mask
    with pytest.raises(ValueError, match="polyp.jpg: (a colour mask|mask values)"):
        ImageMaskFolder(tmp_path, val_fraction=0)[0]
    item = ImageMaskFolder(tmp_path, val_fraction=0, mask_threshold=127)[0]
    assert torch.equal(item["label"][0], torch.from_numpy(disc[..., 0] > 127).long())
    with pytest.raises(ValueError, match="num_classes must be 2"):
        ImageMaskFolder(tmp_path, val_fraction=0, mask_threshold=127, num_classes=3)


def test_folder_errors_name_the_files(tmp_path):
    drive_like(tmp_path, n=3)
    args = {**DRIVE_ARGS, "image_suffix": "_training", "fov_suffix": "_training_mask", "val_fraction": 0}
    (tmp_path / "1st_manual" / "22_manual1.gif").unlink()
    with pytest.raises(FileNotFoundError, match="22_training.tif: no mask for case '22'"):
        ImageMaskFolder(tmp_path, **args)
    Image.fromarray(np.zeros((12, 9), np.uint8)).save(tmp_path / "1st_manual" / "22_manual1.gif")
    ds = ImageMaskFolder(tmp_path, **args)
    with pytest.raises(ValueError, match=r"size mismatch: image .*22_training.tif is \(12, 10\) .*22_manual1.gif is "
                                         r"\(12, 9\)"):
        ds[ds.cases.index("22")]
    good = (tmp_path / "1st_manual" / "21_manual1.gif").read_bytes()
    (tmp_path / "1st_manual" / "22_manual1.gif").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="22_manual1.gif: cannot read image"):
        ds[ds.cases.index("22")]
    (tmp_path / "mask" / "23_training_mask.gif").unlink()
    with pytest.raises(FileNotFoundError, match="no field-of-view mask for case '23'"):
        ImageMaskFolder(tmp_path, **args)
    with pytest.raises(ValueError, match="21_training.tif: image file name does not end with the image_suffix '_x'"):
        ImageMaskFolder(tmp_path, **{**args, "image_suffix": "_x"})
    with pytest.raises(FileNotFoundError, match="mask folder not found: .*labels"):
        ImageMaskFolder(tmp_path, **{**args, "masks": "labels"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no image files"):
        ImageMaskFolder(tmp_path, **{**args, "images": "empty"})


def test_mixed_channel_counts_are_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "images" / "b.png")
    for key in "ab":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / f"{key}.png")
    ds = ImageMaskFolder(tmp_path, val_fraction=0)
    with pytest.raises(ValueError, match="b.png: 1 channels, but the first image of the train split has 3"):
        ds[1]


@pytest.mark.skipif(not DRIVE.exists(), reason="shared DRIVE data not present")
def test_real_drive_with_fov_and_palette_test_mask():
    train = ImageMaskFolder(DRIVE / "training", "train", image_suffix="_training", fov_suffix="_training_mask",
                            **DRIVE_ARGS)
    assert len(train) == 16 and train.in_channels == 3
    item = train[0]
    assert item["image"].shape == (3, 584, 565) and item["label"].shape == (1, 584, 565)
    vessel_fraction = item["label"].float().mean().item()
    assert 0.05 < vessel_fraction < 0.2  # DRIVE vessels cover ~12% of a fundus image
    assert 0.6 < item["fov"].float().mean().item() < 0.75
    assert int((item["label"] * (1 - item["fov"])).sum()) < 100  # vessels lie inside the field of view
    test = ImageMaskFolder(DRIVE / "test", "test", image_suffix="_test", fov_suffix="_test_mask", val_fraction=0,
                           test_fraction=1, **DRIVE_ARGS)
    assert len(test) == 20 and test.cases[0] == "01"
    palette_case = test[0]  # 01_manual1.gif is a palette GIF storing vessels at index 251
    assert set(palette_case["label"].unique().tolist()) == {0, 1}
    assert 0.05 < palette_case["label"].float().mean().item() < 0.2
    check_batches(test)


@pytest.mark.skipif(not ISBI.exists(), reason="shared ISBI-2012 data not present")
def test_real_isbi2012_as_a_folder():
    ds = ImageMaskFolder(ISBI, "val", images="image", masks="label", val_fraction=0.2)
    assert len(ds) == 6 and ds.in_channels == 1
    batch = check_batches(ds)
    assert batch["image"].shape == (2, 1, 512, 512)
    interior = batch["label"].float().mean().item()  # 255 = cell interior, the larger part of each slice
    assert 0.6 < interior < 0.9
