"""Reports: metrics.json/.md and per_case.csv contents; PNG plots that exist, are not blank and show classes."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from medssm.engine.report import CLASS_COLOURS, _slice_3d, plot_curves, plot_overlays, write_metrics


def test_write_metrics_json_markdown_and_csv(tmp_path):
    metrics = {"dice": 0.8125, "hd95": 3.25, "hd95_skipped": 2.0, "dice_2": math.nan}
    info = {"checkpoint": "runs/a/best.safetensors", "dataset": "toy", "split": "test", "seed": 0}
    per_case = [{"case": "a", "dice": 0.5}, {"case": "b", "dice": 1.0, "hd95": 2.0}]
    written = write_metrics(metrics, tmp_path / "eval", "VM-UNet on toy", info, per_case=per_case)
    assert [p.name for p in written] == ["metrics.json", "metrics.md", "per_case.csv"]
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted(p.name for p in written)  # no temps

    data = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert data["title"] == "VM-UNet on toy" and data["info"] == info
    assert data["metrics"] == {"dice": 0.8125, "hd95": 3.25, "hd95_skipped": 2.0, "dice_2": None}

    md = (tmp_path / "eval" / "metrics.md").read_text().splitlines()
    assert md[0] == "# VM-UNet on toy"
    assert "- checkpoint: runs/a/best.safetensors" in md and "- seed: 0" in md
    table = md[md.index("| metric | value |"):]
    assert table[1] == "| --- | --- |"
    assert table[2:] == ["| dice | 0.8125 |", "| hd95 | 3.2500 |", "| hd95_skipped | 2 |", "| dice_2 | nan |"]

    with open(tmp_path / "eval" / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"case": "a", "dice": "0.5", "hd95": ""}, {"case": "b", "dice": "1.0", "hd95": "2.0"}]


def test_write_metrics_without_info_or_cases(tmp_path):
    written = write_metrics({"auc": 0.9}, tmp_path, "t")
    assert [p.name for p in written] == ["metrics.json", "metrics.md"]
    assert (tmp_path / "metrics.md").read_text() == "# t\n\n| metric | value |\n| --- | --- |\n| auc | 0.9000 |\n"
    with pytest.raises(ValueError, match="metrics must be a dict"):
        write_metrics([("auc", 0.9)], tmp_path, "t")
    with pytest.raises(ValueError, match="per_case must be a list of dicts"):
        write_metrics({"auc": 0.9}, tmp_path, "t", per_case=[1, 2])


def png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int64)


def has_colour(pixels: np.ndarray, rgb: np.ndarray, margin: int = 40) -> bool:
    """Any pixel tinted like ``rgb``: its strongest channel clearly above the others (overlays are blended)."""
    main = int(np.argmax(rgb))
    others = [c for c in range(3) if c != main]
    return bool((pixels[..., main] - pixels[..., others].max(-1) > margin).any())


def training_rows() -> list[dict]:
    rows = []
    for step in range(0, 200, 10):
        rows.append({"step": step, "epoch": step // 50, "train_loss": 1 / (1 + step), "lr": 1e-3 * (1 - step / 200)})
        if step % 50 == 0:
            rows.append({"step": step, "epoch": step // 50, "val_dice": step / 200, "val_hd95": 20 - step / 10})
    return rows


def test_plot_curves(tmp_path):
    path = plot_curves(training_rows(), tmp_path / "plots" / "curves.png")
    pixels = png(path)
    assert pixels.shape == (420, 1500, 3)
    assert pixels.std() > 10  # not blank
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]
    # Rows with only some keys, no val rows, no lr: still a figure.
    sparse = plot_curves([{"epoch": 0, "train_loss": 2.0}, {"epoch": 1, "train_loss": math.nan}], tmp_path / "s.png")
    assert png(sparse).std() > 5
    with pytest.raises(ValueError, match="rows must be a list of dicts"):
        plot_curves({"step": 1}, tmp_path / "x.png")


def two_class_example(n: int = 3, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    target = torch.zeros(n, 1, size, size, dtype=torch.long)
    target[:, 0][:, (yy - 10) ** 2 + (xx - 12) ** 2 < 30] = 1
    target[:, 0][:, (yy - 22) ** 2 + (xx - 20) ** 2 < 20] = 2
    images = torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0)) * 0.3 + target * 0.3
    return images, target


def test_plot_overlays_2d(tmp_path):
    images, target = two_class_example()
    pred = target.roll(3, dims=-1)
    pixels = png(plot_overlays(images, target, pred, tmp_path / "o.png", 2, names=["a", "b", "c"]))
    assert pixels.shape[0] > pixels.shape[1]  # 3 rows of 3 panels
    third = pixels.shape[1] // 3
    image_panel, truth_panel = pixels[:, :third], pixels[:, third:2 * third]
    assert not has_colour(image_panel, CLASS_COLOURS[1]) and not has_colour(image_panel, CLASS_COLOURS[2])
    assert has_colour(truth_panel, CLASS_COLOURS[1]) and has_colour(truth_panel, CLASS_COLOURS[2])

    # Probabilities (argmax shown) and RGB images; an empty prediction shows no class colour.
    probs = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).float()
    rgb = images.repeat(1, 3, 1, 1)
    rgb[:, 0] = 0.0
    pixels = png(plot_overlays(rgb, target, probs, tmp_path / "p.png", 2, max_items=2))
    empty = png(plot_overlays(images, torch.zeros_like(target), torch.zeros_like(target), tmp_path / "e.png", 2))
    assert has_colour(pixels[:, 2 * pixels.shape[1] // 3:], CLASS_COLOURS[2])
    assert not has_colour(empty[:, pixels.shape[1] // 3:], CLASS_COLOURS[1])
    assert pixels.shape[0] < empty.shape[0]  # max_items=2 -> fewer rows

    # A list of examples of different sizes (whole volumes/images of varying shape, as evaluation collects).
    small_images, small_target = two_class_example(1, 24)
    mixed = plot_overlays([images[0], small_images[0]], [target[0], small_target[0, 0]],
                          [target[0], small_target[0]], tmp_path / "m.png", 2)
    assert has_colour(png(mixed), CLASS_COLOURS[1])


def test_plot_overlays_3d_and_1d(tmp_path):
    volume = torch.zeros(2, 1, 16, 16, 9, dtype=torch.long)
    volume[:, :, 4:10, 4:10, 2:4] = 1
    volume[:, :, 4:12, 4:12, 6] = 1  # the slice with most foreground
    assert _slice_3d(volume[0, 0].numpy()) == 6
    assert _slice_3d(np.zeros((4, 4, 9))) == 4
    pixels = png(plot_overlays(torch.rand(2, 1, 16, 16, 9), volume, volume, tmp_path / "v.png", 3))
    assert has_colour(pixels, CLASS_COLOURS[1])

    signal = torch.sin(torch.linspace(0, 12, 200)).reshape(1, 1, 200).repeat(2, 1, 1)
    labels = (torch.arange(200) // 50 % 3).reshape(1, 1, 200).repeat(2, 1, 1)
    pixels = png(plot_overlays(signal, labels, labels.roll(5, -1), tmp_path / "s.png", 1))
    assert has_colour(pixels, CLASS_COLOURS[2]) and pixels.std() > 10


def test_plot_overlays_bad_input(tmp_path):
    images, target = two_class_example()
    with pytest.raises(ValueError, match="spatial_dims must be one of"):
        plot_overlays(images, target, target, tmp_path / "x.png", 4)
    with pytest.raises(ValueError, match="images must be"):
        plot_overlays(images, target, target, tmp_path / "x.png", 3)
    with pytest.raises(ValueError, match="same number of examples"):
        plot_overlays(images, target, target[:2], tmp_path / "x.png", 2)
    with pytest.raises(ValueError, match="predictions must be labels"):
        plot_overlays(images, target, target[..., :-1], tmp_path / "x.png", 2)
    with pytest.raises(ValueError, match="names must have one entry"):
        plot_overlays(images, target, target, tmp_path / "x.png", 2, names=["a"])
    assert not (tmp_path / "x.png").exists()
