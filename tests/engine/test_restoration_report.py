"""Per-image restoration outputs: the CSV row (output and input scores, seconds), the 2 x 2 side-by-side
mosaic (layout, clipping, volumes) and the PSNR convention (peak 1 on [0, 1] = peak 255 on 8-bit pixels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medssm.engine.restoration_report import DIFF_GAIN, restoration_row, side_by_side


def test_row_scores_output_and_input_against_the_target():
    torch.manual_seed(0)
    target = torch.rand(1, 1, 20, 24)
    image = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    output = (target + 0.05 * torch.randn_like(target)).clamp(0, 1)
    row = restoration_row(image, output, target, seconds=1.5)
    assert set(row) == {"psnr", "ssim", "mae", "input_psnr", "input_ssim", "input_mae", "seconds"}
    assert row["psnr"] == pytest.approx(10 * math.log10(1 / (output - target).square().mean().item()), rel=1e-5)
    assert row["psnr"] > row["input_psnr"] and row["ssim"] > row["input_ssim"] and row["seconds"] == 1.5


def test_psnr_on_unit_images_equals_peak_255_on_8bit_pixels():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (30, 40))
    noisy = np.clip(clean + rng.integers(-20, 21, clean.shape), 0, 255)
    peak_255 = 10 * math.log10(255**2 / np.mean((noisy - clean).astype(float) ** 2))
    to_unit = [torch.from_numpy(a / 255.0).float()[None, None] for a in (noisy, clean)]
    row = restoration_row(to_unit[0], to_unit[0], to_unit[1], 0.0)
    assert row["psnr"] == pytest.approx(peak_255, abs=1e-4)


def test_side_by_side_layout():
    image, output, target = (torch.full((1, 3, 5), v) for v in (0.2, 0.6, 0.5))
    mosaic = side_by_side(image, output, target)
    assert mosaic.shape == (6, 10) and mosaic.dtype == np.uint8
    assert (mosaic[:3, :5] == 51).all() and (mosaic[:3, 5:] == 153).all()  # noisy | output
    assert (mosaic[3:, :5] == 128).all()  # clean
    assert (mosaic[3:, 5:] == round(0.1 * DIFF_GAIN * 255)).all()  # the amplified difference
    bright = side_by_side(image, torch.full((1, 3, 5), 2.0), target)
    assert bright[0, 5] == 255 and bright[3, 5] == 255  # clipped, not wrapped


def test_side_by_side_of_a_volume_shows_its_middle_slice():
    volume = torch.zeros(1, 5, 4, 6)
    volume[:, 2] = 1.0
    mosaic = side_by_side(volume, volume, volume)
    assert mosaic.shape == (8, 12) and (mosaic[:4, :6] == 255).all() and (mosaic[4:, 6:] == 0).all()
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        side_by_side(torch.zeros(4, 4), torch.zeros(4, 4), torch.zeros(4, 4))


def test_row_takes_the_callers_scores_instead_of_recomputing_them():
    torch.manual_seed(0)
    target = torch.rand(1, 1, 12, 10)
    image = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    given = {"psnr": 1.0, "ssim": 2.0, "mae": 3.0}
    row = restoration_row(image, target, target, 0.5, scores=given)
    assert {k: row[k] for k in given} == given and row["input_psnr"] < 40 and row["seconds"] == 0.5
