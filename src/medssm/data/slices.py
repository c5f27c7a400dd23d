"""A 3D volume stored as numbered 2D slices (PNG/TIF...), split into sub-volumes by slice ranges.

Serial-section EM stacks such as ISBI-2012 (``image/0.png .. image/29.png`` with ``label/0.png ..``) are one
volume: a random split of slices would put neighbouring sections (50 nm apart, nearly identical) on both
sides of the split. The published protocol for 3D work on such a stack holds out contiguous slab ranges
instead, e.g. slices 0-19 train, 20-24 validation, 25-29 test; each split is then a single sub-volume.

Slices are ordered by the number in their file name (``10.png`` after ``9.png``), not alphabetically.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .folders import files_by_key, read_mask, to_unit_range
from .io import load_image
from .splits import SPLITS, check_split, check_split_mapping


def numbered_files(folder: Path, what: str) -> list[Path]:
    """The image files of ``folder`` sorted by the integer in their name (``slice_7.png`` -> 7); ValueError for a
    name holding no number or two files with the same number."""
    numbered: dict[int, Path] = {}
    for key, path in files_by_key(folder, "", what).items():
        digits = re.findall(r"\d+", key)
        if not digits:
            raise ValueError(f"{path}: a {what} slice name must hold its slice number")
        number = int(digits[-1])
        if number in numbered:
            raise ValueError(f"{what} slices {numbered[number].name} and {path.name} share the number {number}")
        numbered[number] = path
    return [numbered[n] for n in sorted(numbered)]


class SliceStack(Dataset):
    """One volume from numbered 2D image and mask slices; each split is a contiguous range of slices.

    Items: "image" float32 (C, D, H, W) in [0, 1], "label" int64 (1, D, H, W) class indices, "name" e.g.
    "slices_20-24". The training split is one volume, so ``train_repeats`` lists it that many times per epoch
    (each draw gets its own random patch from the training transforms); val and test are listed once.

    Args:
        root: the folder holding the ``images`` and ``masks`` folders.
        split: "train", "val" or "test".
        slices: {split: [first, last]} inclusive slice ranges, in slice-number order (position in the sorted
            stack), e.g. {"train": [0, 19], "val": [20, 24], "test": [25, 29]} for ISBI-2012.
        num_classes, mask_threshold: as for :class:`medssm.data.ImageMaskFolder` (0/255 masks read as 0/1).
        train_repeats: how many times the training volume is listed per epoch (>= the batch size).
    """

    task = "segmentation"
    spatial_dims = 3

    def __init__(self, root: str | Path, slices: Mapping[str, Sequence[int]], split: str = "train",
                 images: str = "images", masks: str = "masks", num_classes: int = 2,
                 mask_threshold: float | None = None, train_repeats: int = 16,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.root, self.split, self.transform = Path(root), check_split(split), transform
        self.num_classes, self.mask_threshold = num_classes, mask_threshold
        check_split_mapping(slices, "slices")
        if split not in slices:
            raise ValueError(f"{self.root}: slices gives no range for the {split!r} split (it has {sorted(slices)})")
        if train_repeats < 1:
            raise ValueError(f"train_repeats must be at least 1, got {train_repeats}")
        image_files = numbered_files(self.root / images, "image")
        mask_files = numbered_files(self.root / masks, "mask")
        if len(image_files) != len(mask_files):
            raise ValueError(f"{self.root}: {len(image_files)} image slices but {len(mask_files)} mask slices")
        first, last = _check_range(slices[split], split, len(image_files))
        self._check_disjoint(slices, len(image_files))
        self.image_paths, self.mask_paths = image_files[first:last + 1], mask_files[first:last + 1]
        self.name = f"slices_{first}-{last}"
        self.cases = [self.name]
        self.repeats = train_repeats if split == "train" else 1
        self._volume: dict[str, torch.Tensor] | None = None
        self.in_channels = int(load_image(self.image_paths[0]).array.shape[0])

    @staticmethod
    def _check_disjoint(slices: Mapping[str, Sequence[int]], count: int) -> None:
        taken: dict[int, str] = {}
        for split in SPLITS:
            if split in slices:
                first, last = _check_range(slices[split], split, count)
                for index in range(first, last + 1):
                    if index in taken:
                        raise ValueError(f"slice {index} is in both the {taken[index]!r} and {split!r} ranges")
                    taken[index] = split

    def _load(self) -> dict[str, torch.Tensor]:
        """The split's volume, read once and kept (a few MB for an EM stack)."""
        if self._volume is None:
            images = [to_unit_range(load_image(path)).float() for path in self.image_paths]
            shapes = {tuple(image.shape) for image in images}
            if len(shapes) != 1:
                raise ValueError(f"{self.root}: slices {self.name} differ in shape/channels: {sorted(shapes)}")
            labels = [read_mask(path, self.num_classes, self.mask_threshold) for path in self.mask_paths]
            if {label.shape for label in labels} != {images[0].shape[1:]}:
                raise ValueError(f"{self.root}: mask slices of {self.name} do not match the image size "
                                 f"{tuple(images[0].shape[1:])}")
            self._volume = {"image": torch.stack(images, dim=1),
                            "label": torch.from_numpy(np.stack(labels)[None].astype(np.int64))}
        return self._volume

    def __len__(self) -> int:
        return self.repeats

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.repeats:
            raise IndexError(f"index {index} out of range for {self.repeats} items")
        volume = self._load()
        item: dict[str, Any] = {"image": volume["image"], "label": volume["label"], "name": self.name}
        return self.transform(item) if self.transform is not None else item


def _check_range(bounds: Sequence[int], split: str, count: int) -> tuple[int, int]:
    if len(bounds) != 2 or not all(isinstance(b, int) for b in bounds):
        raise ValueError(f"slices[{split!r}] must be [first, last] slice indices, got {bounds!r}")
    first, last = bounds
    if not 0 <= first <= last < count:
        raise ValueError(f"slices[{split!r}] = [{first}, {last}] must satisfy 0 <= first <= last < {count} "
                         f"(the stack has {count} slices)")
    return first, last
