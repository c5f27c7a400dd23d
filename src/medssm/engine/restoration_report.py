"""What an evaluation of a restoration model writes per image, beside the metrics every task gets:

- a row of ``per_case.csv``: ``case, psnr, ssim, mae`` of the output, ``input_psnr, input_ssim, input_mae``
  of the noisy input against the same target (so the gain is on the row) and ``seconds``, the inference
  time of the image (:func:`restoration_row`);
- ``predictions/<case>.png``: the restored image in the pixel type of the noisy file (8-bit in, 8-bit out;
  16-bit in, 16-bit out), where the dataset says which file a case came from (``noisy_paths``);
- ``side_by_side/<case>.png``: a 2 x 2 mosaic at full resolution, noisy | output over clean | |output -
  clean| (the difference amplified ``DIFF_GAIN`` times, clipped), 8-bit grey, pixel for pixel (no
  resampling, so that speckle and layer edges can be judged): :func:`side_by_side`.

PSNR is the engine's (``Metrics``): 10 log10(1 / MSE) on images scaled to [0, 1] by their stored depth, over
the whole frame, which equals 10 log10(255^2 / MSE) on the 8-bit pixels (the published Duke OCT table's
definition); SSIM is MONAI's (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03) per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.io import load_image
from .files import atomic_path
from .metrics import Metrics
from .outputs import write_restored_like

DIFF_GAIN = 4.0  # |output - clean| is amplified this much in the mosaic (errors are small against the range)
PANELS = ("noisy", "output", "clean", "|output - clean|")


def restoration_row(image: torch.Tensor, output: torch.Tensor, target: torch.Tensor, seconds: float,
                    scores: dict[str, float] | None = None) -> dict[str, float]:
    """One case's row: psnr, ssim, mae of ``output`` and of the noisy ``image``, both against ``target``
    ((1, C, *spatial) each), and the inference ``seconds``. ``scores``: the output's metrics when the caller
    has computed them already (evaluate's per-case Metrics), so they are not computed twice."""
    if scores is None:
        metrics = Metrics("restoration", output.shape[1])
        metrics.update(output, target)
        scores = metrics.compute()
    baseline = Metrics("restoration", output.shape[1])
    baseline.update(image.to(output.dtype), target)
    row = dict(scores)
    row.update({f"input_{key}": value for key, value in baseline.compute().items()})
    row["seconds"] = seconds
    return row


def _plane(x: torch.Tensor) -> np.ndarray:
    """(C, *spatial) -> a 2D grey plane in [0, 1]: the channel mean; the middle slice of a volume."""
    array = x.detach().float().cpu().mean(0).numpy()
    while array.ndim > 2:
        array = array[array.shape[0] // 2]
    return np.clip(array, 0.0, 1.0)


def side_by_side(image: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """The 2 x 2 mosaic (see the module docstring) of (C, H, W) or (C, D, H, W) tensors: uint8 (2H, 2W)."""
    if image.dim() < 3:
        raise ValueError(f"side_by_side takes (C, H, W) or (C, D, H, W) images, got {tuple(image.shape)}")
    noisy, restored, clean = _plane(image), _plane(output), _plane(target)
    diff = np.clip(np.abs(restored - clean) * DIFF_GAIN, 0.0, 1.0)
    mosaic = np.block([[noisy, restored], [clean, diff]])
    return np.rint(mosaic * 255).astype(np.uint8)


def save_side_by_side(image: torch.Tensor, output: torch.Tensor, target: torch.Tensor, path: Path) -> Path:
    """Write :func:`side_by_side` as an 8-bit grey PNG at ``path`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        Image.fromarray(side_by_side(image, output, target)).save(temp, format="PNG")
    return path


def write_case_files(dataset: Any, name: str, image: torch.Tensor, output: torch.Tensor, target: torch.Tensor,
                     out_dir: Path, mosaic: bool) -> None:
    """The prediction file (when the dataset knows the case's noisy raster file) and, with ``mosaic``, the
    side-by-side PNG of case ``name``; tensors (C, *spatial)."""
    source_path = getattr(dataset, "noisy_paths", {}).get(name)
    if source_path is not None and image.dim() == 3:
        source = load_image(source_path)
        if source.kind == "raster" and tuple(source.array.shape[1:]) == tuple(output.shape[1:]):
            (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
            write_restored_like(output.detach().float().cpu().numpy(), source, out_dir / "predictions" / f"{name}.png")
    if mosaic and image.dim() >= 3:
        save_side_by_side(image, output, target, out_dir / "side_by_side" / f"{name}.png")
