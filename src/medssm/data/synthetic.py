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

from .splits import check_split, select_cases


class SyntheticSegmentation(Dataset):
    """Random objects in noise: items {"image": float32 (C, *spatial) in [0, 1], "label": int64 (1, *spatial),
    "name": "<split>_<index>" ("case_<index>" with folds)}.

    Each object is one of the classes 1..num_classes-1, drawn at intensity k for class k (with one foreground
    class, at a random grey in [0.5, 1]); the noise is MONAI's: max(object, uniform(0, (num_classes - 1) * noise)),
    then each channel is rescaled to [0, 1]. Channels share the objects and differ in their noise.

    Args:
        num_samples: items in this split. spatial_size: (H, W) or (H, W, D), each at least 16.
        num_classes: including background (>= 2). in_channels: image channels.
        num_objects: objects per image. noise: noise level (MONAI's ``noise_max``) in [0, 1).
        seed, split: select the (deterministic) draws. transform: callable applied to the item dict.
        fold, num_folds: with ``num_folds``, ``num_samples`` is one pool of cases "case_<i>" (drawn once,
            whatever the split) and fold ``fold`` of a seeded k-fold partition of it is the test split, with
            ``val_fraction`` of the other cases as the val split (:func:`medssm.data.kfold_split`), so that
            ``medssm cv`` can run on generated data. Without it every split draws its own ``num_samples``.
    """

    task = "segmentation"

    def __init__(self, num_samples: int = 32, spatial_size: Sequence[int] = (64, 64), num_classes: int = 2,
                 in_channels: int = 1, seed: int = 0, split: str = "train",
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None, num_objects: int = 5,
                 noise: float = 0.3, fold: int | None = None, num_folds: int | None = None,
                 val_fraction: float = 0.2) -> None:
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
        # Folded: the split's items are the pool indices of its cases, drawn from the one "pool" stream.
        self._draws: list[tuple[str, int]] = [(self.split, i) for i in range(num_samples)]
        if num_folds is not None:
            self.cases = select_cases([f"case_{i}" for i in range(num_samples)], self.split, "synthetic data",
                                      val_fraction=val_fraction, seed=seed, fold=fold, num_folds=num_folds)
            self._draws = [("pool", int(name.split("_")[1])) for name in self.cases]
        elif fold is not None:
            raise ValueError(f"fold={fold} needs num_folds (the number of folds)")

    def __len__(self) -> int:
        return len(self._draws)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self._draws):
            raise IndexError(f"index {index} out of range for {len(self._draws)} samples")
        stream, number = self._draws[index]
        # One random stream per (seed, split, index): a stable hash of the split name, never Python's hash().
        state = np.random.RandomState(np.random.SeedSequence(
            [self.seed, zlib.crc32(stream.encode()), number]).generate_state(1)[0])
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
                "label": torch.from_numpy(label[None].astype(np.int64)),
                "name": f"case_{number}" if stream == "pool" else f"{stream}_{number}"}
        return self.transform(item) if self.transform is not None else item
