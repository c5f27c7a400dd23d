"""Transform presets: MONAI dictionary transforms on the item dicts of :mod:`medssm.data` datasets.

Keys: "image" always; "label" too when it is an image (segmentation masks, restoration targets) so that
every geometric transform moves image and label together; "fov" when present. Other keys ("name",
"affine", "spacing") pass through untouched; after a crop, "affine" still describes the loaded case.

Intensity presets (``modality``):

- "ct": clip to a Hounsfield window (default [-1000, 1000]) and scale it to [0, 1]. nnU-Net clips to
  foreground percentiles of the whole training set; a fixed window needs no dataset pass and keeps the
  same meaning for every case.
- "mr": z-score per channel over the non-zero voxels (the brain or body, not the air around it).
- "raster": nothing (the datasets already give [0, 1]).
- "signal": z-score per channel.

Restoration targets share the image's geometry; only the "ct" window (the same fixed map for both) is
applied to them, because z-scoring input and target with their own statistics would change the task.

Every pipeline ends by turning MONAI's MetaTensors back into plain tensors with the item contract's dtypes
(image float32, segmentation label int64, restoration label float32, fov uint8), so batches collate with
``torch.utils.data.default_collate``.

Random transforms draw from their own NumPy generators. With DataLoader workers, seed them per worker
(``monai.data.DataLoader``, or ``worker_init_fn=monai.data.utils.worker_init_fn``), or every worker repeats
the same augmentations; ``pipeline.set_random_state(seed)`` makes a run repeatable.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    NormalizeIntensityd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandomizableTransform,
    RandSpatialCropd,
    ScaleIntensityRanged,
    SpatialPadd,
)

from ..conventions import DENSE_TASKS, check_spatial_dims, check_task

# The tasks these presets implement (conventions.TASKS also names tasks still to come).
TRANSFORM_TASKS = ("segmentation", "classification", "multilabel", "restoration")
MODALITIES = ("raster", "ct", "mr", "signal")


def train_transforms(task: str, spatial_dims: int, patch_size: Sequence[int] | None = None,
                     modality: str = "raster", flips: bool | None = None, rotations: bool | None = None,
                     pos_neg_ratio: float = 1.0, ct_window: tuple[float, float] = (-1000.0, 1000.0)) -> Compose:
    """Training pipeline (a MONAI ``Compose``) for items of ``task`` with ``spatial_dims`` spatial axes.

    Steps: intensity preset for ``modality``; with ``patch_size``, pad to at least the patch (constant 0)
    then crop one random patch: for segmentation centred on a foreground voxel with probability
    pos_neg_ratio / (pos_neg_ratio + 1) (MONAI's RandCropByPosNegLabeld, one sample, unwrapped), else
    anywhere; random flips along each spatial axis (p=0.5 each); random 90° rotations in the plane of the
    first two spatial axes (p=0.5; only 180° where that plane is not square, so shapes never change).

    ``flips`` / ``rotations`` default (None) to on for segmentation and restoration images (spatial_dims 2
    or 3) and off for classification (orientation may carry the label, e.g. chest X-ray laterality) and for
    1D signals (a time-reversed ECG is not an ECG); True or False overrides that. Rotations never apply to
    1D data.
    """
    _check(task, spatial_dims, modality)
    keys = _spatial_keys(task)
    dense = task in DENSE_TASKS and spatial_dims >= 2
    flips = dense if flips is None else flips
    # A 1D signal has no plane to rotate in, so rotations=True (a config default) is a no-op there.
    rotations = (dense if rotations is None else rotations) and spatial_dims >= 2
    if pos_neg_ratio < 0:
        raise ValueError(f"pos_neg_ratio must be >= 0, got {pos_neg_ratio}")
    steps: list[Any] = _intensity(task, modality, ct_window)
    if patch_size is not None:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != spatial_dims or min(patch) < 1:
            raise ValueError(f"patch_size {tuple(patch_size)} needs {spatial_dims} positive sizes")
        steps.append(SpatialPadd(keys, spatial_size=patch, allow_missing_keys=True))
        if task == "segmentation":
            steps.append(RandCropForeground(keys, patch, pos_neg_ratio))
        else:
            steps.append(RandSpatialCropd(keys, roi_size=patch, random_size=False, allow_missing_keys=True))
    if flips:
        steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis, allow_missing_keys=True) for axis in range(spatial_dims)]
    if rotations:
        steps.append(RandRotate90Safe(keys, prob=0.5))
    steps.append(ToItemTensors(task))
    return Compose(steps)


def eval_transforms(task: str, spatial_dims: int, modality: str = "raster",
                    ct_window: tuple[float, float] = (-1000.0, 1000.0)) -> Compose:
    """Evaluation pipeline: the intensity preset of :func:`train_transforms` and nothing random (whole images;
    sliding-window inference takes care of the size)."""
    _check(task, spatial_dims, modality)
    return Compose([*_intensity(task, modality, ct_window), ToItemTensors(task)])


def _check(task: str, spatial_dims: int, modality: str) -> None:
    check_task(task)
    if task not in TRANSFORM_TASKS:
        raise ValueError(f"task {task!r} is not supported yet by the transform presets (they support "
                         f"{', '.join(TRANSFORM_TASKS)})")
    check_spatial_dims(spatial_dims)
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")


def _spatial_keys(task: str) -> list[str]:
    return ["image", "label", "fov"] if task in DENSE_TASKS else ["image", "fov"]


def _intensity(task: str, modality: str, ct_window: tuple[float, float]) -> list[Any]:
    if modality == "ct":
        low, high = (float(v) for v in ct_window)
        if not low < high:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {ct_window}")
        keys = ["image", "label"] if task == "restoration" else ["image"]
        return [ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)]
    if task == "restoration":
        return []
    if modality == "mr":
        return [NormalizeIntensityd("image", nonzero=True, channel_wise=True)]
    if modality == "signal":
        return [NormalizeIntensityd("image", channel_wise=True)]
    return []


class RandCropForeground(RandomizableTransform, MapTransform):
    """One patch from MONAI's RandCropByPosNegLabeld (pos = pos_neg_ratio, neg = 1), returned as a dict rather
    than a one-element list, so the rest of the pipeline and the DataLoader see ordinary items."""

    def __init__(self, keys: Sequence[str], patch: Sequence[int], pos_neg_ratio: float = 1.0) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=1.0)
        self.crop = RandCropByPosNegLabeld(keys, label_key="label", spatial_size=tuple(patch), pos=pos_neg_ratio,
                                           neg=1.0, num_samples=1, allow_missing_keys=True)

    def set_random_state(self, seed: int | None = None, state=None) -> RandCropForeground:
        super().set_random_state(seed, state)
        self.crop.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return dict(self.crop(data)[0])


class RandRotate90Safe(RandomizableTransform, MapTransform):
    """Rotate by k·90° (k in 1..3, probability ``prob``) in the plane of spatial axes (0, 1) of every key;
    where that plane is not square only k = 2, so the output shape always equals the input shape."""

    def __init__(self, keys: Sequence[str], prob: float = 0.5) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        RandomizableTransform.__init__(self, prob=prob)
        self._k = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._k = int(self.R.randint(1, 4))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        height, width = d["image"].shape[1:3]
        k = self._k if height == width else 2
        for key in self.key_iterator(d):
            d[key] = torch.rot90(torch.as_tensor(d[key]), k, dims=(1, 2))
        return d


class ToItemTensors:
    """Plain tensors with the item contract's dtypes: MetaTensor -> torch.Tensor, image float32, label int64
    (segmentation) / float32 (restoration), fov uint8; contiguous memory."""

    def __init__(self, task: str) -> None:
        self.task = task

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, value in d.items():
            if isinstance(value, MetaTensor):
                d[key] = value.as_tensor()
        d["image"] = torch.as_tensor(d["image"]).float().contiguous()
        if "label" in d and self.task == "segmentation":
            d["label"] = torch.as_tensor(d["label"]).round().long().contiguous()
        elif "label" in d and self.task == "restoration":
            d["label"] = torch.as_tensor(d["label"]).float().contiguous()
        if "fov" in d:
            d["fov"] = (torch.as_tensor(d["fov"]) > 0).to(torch.uint8).contiguous()
        return d
