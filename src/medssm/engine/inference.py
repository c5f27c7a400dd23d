"""Inference for evaluation and prediction: whole image or MONAI sliding window, optional flip TTA.

Both the sliding-window blend and the TTA average act on probabilities (``metrics.probabilities``), not
logits, so every window and every flip votes with the same scale.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference

from ..conventions import DENSE_TASKS
from .metrics import METRIC_TASKS, probabilities
from .tasks import SEQUENCE_TASKS, check_supported

BLEND_MODES = ("gaussian", "constant")


def flip_combinations(spatial_dims: int) -> list[tuple[int, ...]]:
    """All subsets of the spatial axes of a (B, C, *spatial) tensor, the empty one (no flip) first.

    e.g. 2 -> [(), (2,), (3,), (2, 3)].
    """
    axes = tuple(range(2, 2 + spatial_dims))
    return [combo for r in range(spatial_dims + 1) for combo in itertools.combinations(axes, r)]


def _roi(roi_size: int | Sequence[int] | None, spatial_dims: int) -> tuple[int, ...] | None:
    if roi_size is None:
        return None
    roi = (roi_size,) * spatial_dims if isinstance(roi_size, int) else tuple(roi_size)
    if len(roi) != spatial_dims or not all(isinstance(s, int) and s > 0 for s in roi):
        raise ValueError(f"roi_size must be one positive int or {spatial_dims} positive ints (one per spatial axis), "
                         f"got {roi_size}")
    return roi


def infer(model: torch.nn.Module, image: torch.Tensor, task: str, roi_size: int | Sequence[int] | None = None,
          overlap: float = 0.25, mode: str = "gaussian", sw_batch_size: int = 4,
          tta_flips: bool = False) -> torch.Tensor:
    """Probabilities for a batch, with the model in eval mode and no autograd.

    Args:
        model: returns logits (B, K, *spatial) for segmentation, (B, K) for classification/multilabel,
            the image (B, C, *spatial) for restoration.
        image: (B, C, *spatial), 1 to 3 spatial dims, on the model's device.
        task: "segmentation", "classification", "multilabel" or "restoration".
        roi_size: dense tasks only. None: one forward over the whole image. Otherwise the window size
            (int or one per axis) for MONAI's ``sliding_window_inference``; images smaller than the window
            are padded and the result cropped back.
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        mode: "gaussian" (windows weigh their centre most, which hides seams) or "constant".
        sw_batch_size: windows per forward pass.
        tta_flips: average over all 2**spatial_dims flips of the spatial axes (flip the input, run, flip a
            dense output back).

    Returns:
        (B, K, *spatial) or (B, K) probabilities (softmax for segmentation/classification, sigmoid for
        multilabel); for restoration the output image. A plain ``torch.Tensor`` (MONAI MetaTensors are
        unwrapped). The model's train/eval mode is restored afterwards.
    """
    check_supported(task, METRIC_TASKS, "infer")
    if task == "mil":
        return infer_bag(model, image, roi_size, tta_flips)
    if not isinstance(image, torch.Tensor) or not 3 <= image.ndim <= 5:
        raise ValueError(f"image must be a tensor (B, C, *spatial) with 1 to 3 spatial dims, "
                         f"got {getattr(image, 'shape', type(image))}")
    spatial_dims = image.ndim - 2
    roi = _roi(roi_size, spatial_dims)
    if roi is not None and task not in DENSE_TASKS:
        raise ValueError(f"roi_size (sliding window) applies to dense tasks {DENSE_TASKS}, not {task!r}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if mode not in BLEND_MODES:
        raise ValueError(f"mode must be one of {BLEND_MODES}, got {mode!r}")
    if sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
    if tta_flips and task in SEQUENCE_TASKS:
        raise ValueError(f"flip test-time augmentation needs spatial axes; {task!r} inputs are token sequences")

    def predict(x: torch.Tensor) -> torch.Tensor:
        return probabilities(task, model(x))

    def forward(x: torch.Tensor) -> torch.Tensor:
        if roi is None:
            return predict(x)
        return sliding_window_inference(x, roi, sw_batch_size, predict, overlap=overlap, mode=mode)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if not tta_flips:
                out = forward(image)
            else:
                dense = task in DENSE_TASKS
                total = None
                flips = flip_combinations(spatial_dims)
                for axes in flips:
                    y = forward(image.flip(axes) if axes else image)
                    if dense and axes:
                        y = y.flip(axes)
                    total = y if total is None else total + y
                out = total / len(flips)
    finally:
        model.train(was_training)
    return out.as_subclass(torch.Tensor) if type(out) is not torch.Tensor else out


def infer_bag(model: torch.nn.Module, bag: torch.Tensor, roi_size: object = None, tta_flips: bool = False,
              instance_scores: bool = False):
    """Bag probabilities (B, K) of a "mil" model for a bag (B, n, ...) in eval mode without autograd; with
    ``instance_scores`` also the model's per-instance scores (B, n) (its ``return_instance_scores``). A bag
    has no grid, so a sliding window or flip TTA is a ValueError."""
    if roi_size is not None or tta_flips:
        raise ValueError("a bag of instances has no grid: roi_size (sliding window) and tta_flips do not apply")
    if not isinstance(bag, torch.Tensor) or bag.ndim < 3:
        raise ValueError(f"a bag must be a tensor (B, n, ...), got {getattr(bag, 'shape', type(bag))}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if not instance_scores:
                return probabilities("mil", model(bag))
            logits, scores = model(bag, return_instance_scores=True)
            return probabilities("mil", logits), scores
    finally:
        model.train(was_training)
