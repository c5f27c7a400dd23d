"""Synthetic segmentation data (random circles or spheres in noise) for demos, smoke tests and tutorials.

Built on MONAI's ``create_test_image_2d`` / ``create_test_image_3d``. Every item is a pure function of
(seed, split, index), so train, val and test differ, and two processes (or DataLoader workers) draw the same
data. The objects are large and few, so a small network learns them within minutes on a CPU.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data.synthetic import create_test_image_2d, create_test_image_3d
from torch.utils.data import Dataset

from .splits import check_split


class SyntheticSegmentation(Dataset):
    """Random objects in noise: items {"image": float32 (C, *spatial) in [0, 1], "label": int64 (1, *spatial),
    "name": "<split>_<index>"}.

    Each object is one of the classes 1..num_classes-1, drawn at intensity k for class k (with one foreground
    class, at a random grey in [0.5, 1]); the noise is MONAI's: max(object, uniform(0, (num_classes - 1) * noise)),
    then each channel is rescaled to [0, 1]. Channels share the objects and differ in their noise.

    Args:
        num_samples: items in this split. spatial_size: (H, W) or (H, W, D), each at least 16.
        num_classes: including background (>= 2). in_channels: image channels.
        num_objects: objects per image. noise: noise level (MONAI's ``noise_max``) in [0, 1).
        seed, split: select the (deterministic) draws. transform: callable applied to the item dict.
    """

    task = "segmentation"

    def __init__(self, num_samples: int = 32, spatial_size: Sequence[int] = (64, 64), num_classes: int = 2,
                 in_channels: int = 1, seed: int = 0, split: str = "train",
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None, num_objects: int = 5,
                 noise: float = 0.3) -> None:
        self.split, self.transform = check_split(split), transform
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) not in (2, 3) or min(self.spatial_size) < 16:
            raise ValueError(f"spatial_size must be 2 or 3 sizes, each at least 16, got {tuple(spatial_size)}")
        if num_samples < 1 or num_classes < 2 or in_channels < 1 or num_objects < 1:
            raise ValueError(f"need num_samples >= 1, num_classes >= 2, in_channels >= 1, num_objects >= 1; got "
                             f"{num_samples}, {num_classes}, {in_channels}, {num_objects}")
        if not 0.0 <= noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {noise}")
        self.num_samples, self.num_classes, self.in_channels = num_samples, num_classes, in_channels
        self.num_objects, self.noise, self.seed = num_objects, noise, seed
        self.spatial_dims = len(self.spatial_size)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        # One random stream per (seed, split, index): a stable hash of the split name, never Python's hash().
        state = np.random.RandomState(np.random.SeedSequence(
            [self.seed, zlib.crc32(self.split.encode()), index]).generate_state(1)[0])
        smallest = min(self.spatial_size)
        rad_max = max(smallest // 6, 3)
        rad_min = max(rad_max // 3, 2)
        create = create_test_image_2d if self.spatial_dims == 2 else create_test_image_3d
        # Objects without noise from MONAI, then MONAI's noise model per channel from the same stream.
        clean, label = create(*self.spatial_size, num_objs=self.num_objects, rad_max=rad_max, rad_min=rad_min,
                              noise_max=0.0, num_seg_classes=self.num_classes - 1, random_state=state)
        channels = []
        for _ in range(self.in_channels):
            noisy = np.maximum(clean, state.uniform(0, (self.num_classes - 1) * self.noise, size=clean.shape))
            low, high = noisy.min(), noisy.max()
            channels.append((noisy - low) / (high - low) if high > low else noisy * 0)
        item = {"image": torch.from_numpy(np.stack(channels).astype(np.float32)),
                "label": torch.from_numpy(label[None].astype(np.int64)), "name": f"{self.split}_{index}"}
        return self.transform(item) if self.transform is not None else item
