"""BM3D as a classical method: the noise-level rule, the domains, and `evaluate` without a checkpoint
(per-image CSV, side-by-side PNGs, predictions in the input's bit depth, a gain over the noisy input)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from medssm.engine.classical import DOMAINS, BM3DDenoiser, build_classical, from_domain, mad_sigma, to_domain
from medssm.engine.evaluate import evaluate


def _clean(shape=(32, 40), seed=0):
    """A smooth layered image in [0.1, 0.9], like B-scan layers."""
    rows = np.linspace(0, 3 * np.pi, shape[0])[:, None]
    cols = np.linspace(0, np.pi, shape[1])[None, :]
    return 0.5 + 0.4 * np.sin(rows + 0.3 * np.sin(cols + seed))


def test_mad_sigma_recovers_gaussian_noise_level():
    rng = np.random.default_rng(0)
    for sigma in (0.02, 0.05, 0.1):
        noisy = _clean((128, 128)) + rng.normal(0, sigma, (128, 128))
        assert mad_sigma(noisy) == pytest.approx(sigma, rel=0.1)
    with pytest.raises(ValueError, match="2D image"):
        mad_sigma(np.zeros((2, 8, 8)))


@pytest.mark.parametrize("domain", DOMAINS)
def test_domains_invert(domain):
    x = np.linspace(0, 1, 256)
    np.testing.assert_allclose(from_domain(to_domain(x, domain), domain), x, atol=1e-12)


def test_bm3d_module_denoises_each_image_and_channel():
    rng = np.random.default_rng(1)
    clean = np.stack([_clean(seed=s) for s in range(2)])[:, None]  # (2, 1, 32, 40)
    noisy = torch.from_numpy(np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1)).float()
    model = BM3DDenoiser(domain="linear", sigma_scale=1.0)
    out = model(noisy)
    assert out.shape == noisy.shape and out.dtype == noisy.dtype and len(model.last_sigmas) == 2
    mse_in = ((noisy.numpy() - clean) ** 2).mean()
    mse_out = ((out.numpy() - clean) ** 2).mean()
    assert mse_out < mse_in / 3
    assert not list(model.parameters())
    with pytest.raises(ValueError, match="2D images"):
        model(noisy[0])


def test_build_classical_rejects_bad_names_and_arguments():
    with pytest.raises(ValueError, match="unknown classical method 'nlm'"):
        build_classical("nlm")
    with pytest.raises(ValueError, match="domain must be one of"):
        build_classical("bm3d", {"domain": "exp"})
    with pytest.raises(ValueError, match="bad arguments for bm3d"):
        build_classical("bm3d", {"sigma": 3})


def _paired_folder(root, cases=2, bits=8):
    rng = np.random.default_rng(2)
    peak = 255 if bits == 8 else 65535
    dtype = np.uint8 if bits == 8 else np.uint16
    for i in range(cases):
        clean = _clean(seed=i)
        noisy = np.clip(clean + rng.normal(0, 0.08, clean.shape), 0, 1)
        (root / f"{i:02d}").mkdir(parents=True)
        for name, image in (("noisy", noisy), ("clean_average", clean)):
            Image.fromarray(np.rint(image * peak).astype(dtype)).save(root / f"{i:02d}" / f"{name}.png")


def _config(tmp_path, root):
    config = {"model": {"name": "mambair"},
              "data": {"name": "paired", "args": {"root": str(root), "layout": "cases", "noisy": "noisy",
                                                  "clean": "clean_average", "val_fraction": 0.0,
                                                  "test_fraction": 1.0}},
              "transforms": {"modality": "raster", "patch_size": [16, 16]},
              "train": {"max_steps": 1}}
    path = tmp_path / "paired.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("bits", [8, 16])
def test_evaluate_bm3d_writes_the_restoration_report(tmp_path, bits):
    root = tmp_path / "data"
    _paired_folder(root, bits=bits)
    out = tmp_path / "eval"
    metrics = evaluate(None, out, split="test", method="bm3d", config=_config(tmp_path, root),
                       overrides=["model.name=bm3d", "model.args={domain: linear, sigma_scale: 1.0}"], max_overlays=1)
    with open(out / "per_case.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["00", "01"]
    assert list(rows[0]) == ["case", "psnr", "ssim", "mae", "input_psnr", "input_ssim", "input_mae", "seconds"]
    for row in rows:
        assert float(row["psnr"]) > float(row["input_psnr"]) + 3 and float(row["ssim"]) > float(row["input_ssim"])
        assert float(row["seconds"]) > 0
    assert metrics["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]))
    mosaics = sorted(p.name for p in (out / "side_by_side").iterdir())
    assert mosaics == ["00.png"]  # max_overlays
    mosaic = np.asarray(Image.open(out / "side_by_side" / "00.png"))
    assert mosaic.shape == (64, 80) and mosaic.dtype == np.uint8
    noisy = np.asarray(Image.open(root / "00" / "noisy.png")).astype(float) / (255 if bits == 8 else 65535)
    np.testing.assert_allclose(mosaic[:32, :40] / 255, noisy, atol=0.5 / 255 + 1e-9)  # top left: the input
    predicted = Image.open(out / "predictions" / "00.png")
    assert np.asarray(predicted).dtype == (np.uint8 if bits == 8 else np.uint16)
    assert np.asarray(predicted).shape == (32, 40)
    assert json.loads((out / "metrics.json").read_text())["info"]["model"] == "bm3d"


def test_evaluate_without_checkpoint_needs_a_method(tmp_path):
    with pytest.raises(ValueError, match="needs a classical method"):
        evaluate(None, tmp_path / "eval", method=None, config=tmp_path / "x.yaml")
