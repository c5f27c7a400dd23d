"""MedMNIST npz files (2D and 3D, any image size) with the official keys and splits.

A MedMNIST file holds ``{split}_images`` and ``{split}_labels`` for split in train, val and test
(Yang et al., Sci Data 10:41, 2023). Images are uint8: (N, H, W) grey, (N, H, W, 3) RGB, or (N, D, H, W)
volumes; labels are (N, 1) class indices or (N, K) multi-label 0/1 vectors.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .splits import SPLITS


class MedMNIST(Dataset):
    """One split of a MedMNIST npz file.

    Items are dicts: "image" float32 in [0, 1] of shape (channels, *spatial) — (1, H, W), (3, H, W) or
    (1, D, H, W) —, "label" an int64 scalar (multi-class, task "classification") or a float32 (K,) 0/1
    vector (multi-label, task "multilabel"), and "name" "<split>_<index>".

    Args:
        path: the .npz file. split: "train", "val" or "test".
        spatial_dims: 2 or 3; default: 3 for (N, D, H, W) arrays unless their last axis has 3 channels.
        num_classes: if given, class labels outside [0, num_classes) are an error; default: one more than
            the largest label in any split of the file (so every split reports the same count).
        multi_label: labels are (N, K) 0/1 vectors (ChestMNIST); default: True when K > 1.
        transform: optional callable applied to the item dict.
    """

    def __init__(self, path: str | Path, split: str = "train", spatial_dims: int | None = None,
                 num_classes: int | None = None, multi_label: bool | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.path = Path(path)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        images, labels = _load_split(self.path, split)
        self.spatial_dims = _spatial_dims(images, spatial_dims, self.path)
        if labels.ndim == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"{self.path}: {split}_labels has shape {labels.shape} but {split}_images holds "
                             f"{images.shape[0]} images; expected ({images.shape[0]}, 1) or ({images.shape[0]}, K)")
        self.multi_label = labels.shape[1] > 1 if multi_label is None else multi_label
        if not self.multi_label and labels.shape[1] != 1:
            raise ValueError(f"{self.path}: {split}_labels has {labels.shape[1]} columns; pass multi_label=True")
        if num_classes is not None and not self.multi_label:
            bad = (labels < 0) | (labels >= num_classes)
            if bad.any():
                raise ValueError(f"{self.path}: {split}_labels holds {np.unique(labels[bad]).tolist()}, outside the "
                                 f"declared classes 0..{num_classes - 1}")
        self.images, self.labels, self.split, self.transform = images, labels, split, transform
        self.task = "multilabel" if self.multi_label else "classification"
        if self.multi_label:
            self.num_classes = labels.shape[1]
        else:
            self.num_classes = num_classes if num_classes is not None else _largest_label(self.path) + 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = torch.from_numpy(np.asarray(self.images[index], dtype=np.float32) / 255.0)
        if image.dim() == self.spatial_dims + 1:  # (H, W, 3) RGB: channels first
            image = image.movedim(-1, 0).contiguous()
        else:
            image = image.unsqueeze(0)
        label = self.labels[index]
        if self.multi_label:
            target = torch.from_numpy(label.astype(np.float32))
        else:
            target = torch.tensor(int(label[0]), dtype=torch.int64)
        item = {"image": image, "label": target, "name": f"{self.split}_{index}"}
        return self.transform(item) if self.transform is not None else item

    @property
    def in_channels(self) -> int:
        return 3 if self.images.ndim == self.spatial_dims + 2 else 1

    num_channels = in_channels  # the name used before the item contract


def _load_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            wanted = (f"{split}_images", f"{split}_labels")
            missing = [k for k in wanted if k not in keys]
            if missing:
                raise ValueError(f"{path}: missing {missing}; a MedMNIST file holds "
                                 f"{{train,val,test}}_{{images,labels}} (found {sorted(keys)})")
            images, labels = data[wanted[0]], data[wanted[1]]
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable .npz file (truncated or corrupted?): {err}") from err
    if len(images) == 0:
        raise ValueError(f"{path}: the {split} split is empty")
    if images.ndim not in (3, 4):
        raise ValueError(f"{path}: {split}_images has shape {images.shape}; expected (N, H, W), (N, H, W, 3) "
                         f"or (N, D, H, W)")
    return images, labels


def _largest_label(path: Path) -> int:
    """The largest class label over the splits present in the file (labels only are read)."""
    with np.load(path, allow_pickle=False) as data:
        return max(int(data[f"{split}_labels"].max()) for split in SPLITS
                   if f"{split}_labels" in data.files and data[f"{split}_labels"].size)


def _spatial_dims(images: np.ndarray, spatial_dims: int | None, path: Path) -> int:
    if spatial_dims is None:
        return 2 if images.ndim == 3 or images.shape[-1] == 3 else 3
    if spatial_dims not in (2, 3) or (spatial_dims == 2 and images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"{path}: spatial_dims={spatial_dims} does not fit images of shape {images.shape}")
    return spatial_dims
