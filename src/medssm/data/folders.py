"""2D image/mask folders (PNG, JPG, TIF, GIF, BMP): DRIVE, ISBI-2012, ISIC, Kvasir-SEG and the like.

Each image is paired with its mask by a case key, the file stem minus a fixed suffix: DRIVE's
``images/21_training.tif`` (image_suffix "_training"), ``1st_manual/21_manual1.gif`` (mask_suffix
"_manual1") and ``mask/21_training_mask.gif`` (fov_suffix "_training_mask") all have the key "21".

Masks may be stored as 0/255 (read as 0/1), as palette images (palette indices; a palette mask with two
values is binarised with > 0 when ``num_classes`` is 2, as DRIVE's ``test/1st_manual/01_manual1.gif``
stores its vessels at index 251), or as class-index images (0..num_classes-1). Lossy JPEG masks (Kvasir-SEG)
hold values around 0 and 255; ``mask_threshold=127`` binarises them (pixel > threshold).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .io import RASTER_SUFFIXES, LoadedImage, load_image, read_raster_pixels
from .splits import check_split, select_cases


def to_unit_range(loaded: LoadedImage) -> torch.Tensor:
    """A raster image's pixels scaled to [0, 1] from their stored depth: 8-bit / 255, 16-bit / 65535.

    Float images are returned unchanged; bilevel ("1") images are already 0/1. Pillow reads 16-bit grey as
    uint16 (or int32 in older versions), so int32 values above 65535 are an error rather than a guess.
    """
    dtype = loaded.meta.get("dtype", "")
    array = loaded.array
    if dtype == "uint8":
        return array / 255.0
    if dtype in ("uint16", "int32"):
        if array.numel() and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"{loaded.path}: {dtype} pixels outside 0..65535; store images as 8- or 16-bit")
        return array / 65535.0
    return array


class ImageMaskFolder(Dataset):
    """2D segmentation images with masks in sibling folders, one split of the cases.

    Items: "image" float32 (C, H, W) in [0, 1] (C = 1 grey, 3 colour), "label" int64 (1, H, W) class
    indices, "fov" uint8 (1, H, W) when a field-of-view folder is given, "name" the case key.

    Args:
        root: the folder holding the ``images``, ``masks`` (and ``fov``) folders (relative names are joined
            to ``root``).
        split: "train", "val" or "test": a seeded split of the cases (``val_fraction``, ``test_fraction``,
            ``seed``) or the lists in ``split_file`` (JSON {"train": [...], "val": [...], "test": [...]}).
            A folder that is a fixed test set on its own (DRIVE's ``test/``) is read whole with
            ``split="test", val_fraction=0, test_fraction=1``.
        image_suffix, mask_suffix, fov_suffix: removed from the file stems to form the case keys.
        num_classes: including background; mask values must fall in 0..num_classes-1 after mapping.
        mask_threshold: binarise masks as pixel > threshold (colour masks averaged first); for lossy JPEG
            masks, and only with num_classes=2.
        fold, num_folds: with ``num_folds``, fold ``fold`` of a seeded k-fold partition is the test split and
            ``val_fraction`` of the other cases the val split (:func:`medssm.data.kfold_split`).
        transform: callable applied to the item dict (e.g. :func:`medssm.data.train_transforms`).
    """

    task = "segmentation"
    spatial_dims = 2

    def __init__(self, root: str | Path, split: str = "train", images: str = "images", masks: str = "masks",
                 fov: str | None = None, image_suffix: str = "", mask_suffix: str = "", fov_suffix: str = "",
                 split_file: str | Path | None = None, val_fraction: float = 0.2, test_fraction: float = 0.0,
                 seed: int = 0, fold: int | None = None, num_folds: int | None = None, num_classes: int = 2,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 mask_threshold: float | None = None) -> None:
        self.root, self.split = Path(root), check_split(split)
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be at least 2, got {num_classes}")
        if mask_threshold is not None and num_classes != 2:
            raise ValueError(f"mask_threshold binarises masks, so num_classes must be 2, got {num_classes}")
        self.num_classes, self.transform, self.mask_threshold = num_classes, transform, mask_threshold
        image_files = files_by_key(self.root / images, image_suffix, "image")
        mask_files = files_by_key(self.root / masks, mask_suffix, "mask")
        fov_files = files_by_key(self.root / fov, fov_suffix, "fov") if fov is not None else None
        for key, path in sorted(image_files.items()):
            if key not in mask_files:
                raise FileNotFoundError(f"{path}: no mask for case {key!r} in {self.root / masks} (looked for "
                                        f"'{key}{mask_suffix}.*')")
            if fov_files is not None and key not in fov_files:
                raise FileNotFoundError(f"{path}: no field-of-view mask for case {key!r} in {self.root / fov} "
                                        f"(looked for '{key}{fov_suffix}.*')")
        self.cases = select_cases(list(image_files), split, self.root, split_file, val_fraction, test_fraction, seed,
                                  fold=fold, num_folds=num_folds)
        self.image_paths = {key: image_files[key] for key in self.cases}
        self.mask_paths = {key: mask_files[key] for key in self.cases}
        self.fov_paths = None if fov_files is None else {key: fov_files[key] for key in self.cases}
        # Every image of a split must have the same channel count, or batches would not stack.
        self.in_channels = int(load_image(self.image_paths[self.cases[0]]).array.shape[0])

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = self.cases[index]
        image_path, mask_path = self.image_paths[key], self.mask_paths[key]
        image = to_unit_range(load_image(image_path)).float()
        if image.shape[0] != self.in_channels:
            raise ValueError(f"{image_path}: {image.shape[0]} channels, but the first image of the {self.split} "
                             f"split has {self.in_channels}; convert the folder to one colour mode")
        label = read_mask(mask_path, self.num_classes, self.mask_threshold)
        _check_same_size(image_path, image.shape[1:], mask_path, label.shape)
        item: dict[str, Any] = {"image": image, "label": torch.from_numpy(label[None].astype(np.int64))}
        if self.fov_paths is not None:
            fov_path = self.fov_paths[key]
            fov = read_fov(fov_path)
            _check_same_size(image_path, image.shape[1:], fov_path, fov.shape)
            item["fov"] = torch.from_numpy(fov[None])
        item["name"] = key
        return self.transform(item) if self.transform is not None else item


def read_mask(path: Path, num_classes: int, threshold: float | None = None) -> np.ndarray:
    """A mask file as (H, W) class indices: 0/255 -> 0/1, palette -> indices (binary palette -> 0/1 when
    ``num_classes`` is 2), anything else taken as class indices; with ``threshold``, pixel > threshold.
    Values outside 0..num_classes-1 raise ValueError naming the file and the values found."""
    pixels, mode = read_raster_pixels(path, lambda source: None)
    if threshold is not None:
        grey = pixels[..., :3].mean(axis=-1) if pixels.ndim == 3 else pixels
        return (grey > threshold).astype(np.int64)
    if pixels.ndim == 3:  # colour-coded masks are not class indices; grey stored as RGB is accepted
        if not all(np.array_equal(pixels[..., 0], pixels[..., c]) for c in range(1, min(3, pixels.shape[-1]))):
            raise ValueError(f"{path}: a colour mask (mode {mode}); expected grey, palette or class-index masks")
        pixels = pixels[..., 0]
    values = np.unique(pixels)
    if mode in ("P", "PA") and num_classes == 2 and len(values) <= 2:
        mask = (pixels > 0).astype(np.int64)
    elif pixels.dtype == bool:
        mask = pixels.astype(np.int64)
    elif len(values) and set(values.tolist()) <= {0, 255} and num_classes < 256 and values.max() == 255:
        mask = (pixels == 255).astype(np.int64)  # 0/255 binary masks
    elif len(values) and set(values.tolist()) <= {0, 65535} and values.max() == 65535:
        mask = (pixels == 65535).astype(np.int64)  # 16-bit 0/65535 binary masks
    else:
        mask = pixels.astype(np.int64)
    found = np.unique(mask)
    bad = found[(found < 0) | (found >= num_classes)]
    if len(bad):
        raise ValueError(f"{path}: mask values {np.unique(pixels).tolist()[:20]} (mode {mode}) give classes "
                         f"{bad.tolist()[:20]} outside 0..{num_classes - 1}; masks must be 0/255, palette or class "
                         f"indices below num_classes={num_classes} (lossy JPEG masks: pass mask_threshold)")
    return mask


def read_fov(path: Path) -> np.ndarray:
    """A field-of-view mask as (H, W) uint8, 1 inside (any non-zero pixel)."""
    pixels = read_raster_pixels(path, lambda source: None)[0]
    if pixels.ndim == 3:
        pixels = pixels[..., :3].max(axis=-1)
    return (pixels > 0).astype(np.uint8)


def strip_extension(path: Path, extensions: Sequence[str] = RASTER_SUFFIXES) -> str | None:
    """The file name without its image extension (".nii.gz" counts as one), or None for other files."""
    lower = path.name.lower()
    for extension in extensions:
        if lower.endswith(extension):
            return path.name[: len(path.name) - len(extension)]
    return None


def files_by_key(folder: Path, suffix: str, what: str,
                 extensions: Sequence[str] = RASTER_SUFFIXES) -> dict[str, Path]:
    """Image files of ``folder`` (those ending in one of ``extensions``) keyed by their name without extension
    and without ``suffix``; errors for a missing or empty folder, a name without the suffix, and two files
    with the same key."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        stem = strip_extension(path, extensions)
        if path.name.startswith(".") or not path.is_file() or stem is None:
            continue
        if not stem.endswith(suffix):
            raise ValueError(f"{path}: {what} file name does not end with the {what}_suffix {suffix!r}")
        key = stem[: len(stem) - len(suffix)] if suffix else stem
        if key in files:
            raise ValueError(f"{what} files {files[key].name} and {path.name} in {folder} share the case key {key!r}")
        files[key] = path
    if not files:
        raise ValueError(f"{folder}: no {what} files ({', '.join(extensions)})")
    return files


def _check_same_size(image_path: Path, image_shape: tuple[int, ...], other_path: Path,
                     other_shape: tuple[int, ...]) -> None:
    if tuple(image_shape) != tuple(other_shape):
        raise ValueError(f"size mismatch: image {image_path} is {tuple(image_shape)} (H, W) but {other_path} is "
                         f"{tuple(other_shape)}")
