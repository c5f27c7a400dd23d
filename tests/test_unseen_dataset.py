"""Issue 21: a segmentation set the code was never run on trains and evaluates with every registered
segmentation model through a config change only.

The 2D folders are generated here, unlike DRIVE in every way the loaders and models could assume: PNG
instead of TIF/GIF, other file-name suffixes, an odd number of images (7) of a different size each, sides
that are not multiples of 16 (one below the training patch), grey (1-channel) and colour (3-channel)
images, masks stored as 0/255 and as class indices, with and without a field-of-view folder. Each model
trains 2 steps and is evaluated on the test split through the shipped DRIVE config with overrides only. The
3D models go through an nnU-Net-layout NIfTI folder (odd, anisotropic volume sizes) with the shipped ISBI-2012
3D config, again by overrides only. Widths are tiny (``model.args``) so that the whole grid stays short; the
full grid is marked slow; a 2D Mamba model and the 3D U-Net stay in the default suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medssm.cli import main
from medssm.models import get_entry, list_models

SIZES_2D = [(61, 75), (83, 58), (45, 99), (70, 70), (97, 53), (58, 88), (77, 66)]  # (H, W), odd count
SIZES_3D = [(21, 27, 13), (18, 25, 11), (23, 19, 15), (20, 22, 9), (25, 17, 12)]
# Tiny widths per model (its own argument names); a model added later runs at its defaults.
TINY = {
    "lightm_unet": {"init_filters": 8},
    "umamba_bot": {"features": [8, 16, 32]},
    "umamba_enc": {"features": [8, 16, 32]},
    "vm_unet": {"features": [8, 16, 32, 64]},
    "mhs_vm_unet": {"features": [8, 16, 32, 64]},
    "msvm_unet": {"features": [8, 16, 32, 64]},
    "segmamba": {"features": [8, 16, 32, 64], "hidden_size": 64},
    "mini_mamba_unet": {"features": [8, 16], "mamba_stages": 1},
    "unet": {"features": [8, 8, 16, 16, 32, 8]},
    "segresnet": {"init_filters": 8},
    "swin_unetr": {"feature_size": 12},
}
FAST_2D, FAST_3D = ("mini_mamba_unet",), ("unet",)  # the default suite's subset
TRAIN = ["train.max_steps=2", "train.batch_size=2", "train.val_every=2", "train.checkpoint_every=2",
         "train.warmup_steps=0"]


def _blob(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random ellipsoid inside ``shape`` (bool)."""
    grid = np.indices(shape, dtype=np.float32)
    centre = [rng.uniform(0.3, 0.7) * s for s in shape]
    radii = [rng.uniform(0.15, 0.3) * s for s in shape]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) < 1


def _folder_2d(root: Path, colour: bool, fov: bool) -> Path:
    """7 PNG cases: img/<key>.png (grey or RGB), seg/<key>_seg.png (0/255 or class indices), roi/<key>_roi.png."""
    rng = np.random.default_rng(1 if colour else 0)
    for sub in ("img", "seg", "roi"):
        (root / sub).mkdir(parents=True)
    for i, shape in enumerate(SIZES_2D):
        label = _blob(shape, rng)
        image = np.clip(60 + 120 * label + rng.normal(0, 30, shape), 0, 255).astype(np.uint8)
        pixels = np.stack([image, 255 - image, image // 2], -1) if colour else image
        Image.fromarray(pixels).save(root / "img" / f"case{i:02d}.png")
        mask = label.astype(np.uint8) * (1 if colour else 255)  # class indices / 0-255
        Image.fromarray(mask).save(root / "seg" / f"case{i:02d}_seg.png")
        if fov:
            Image.fromarray(np.pad(np.full((shape[0] - 4, shape[1] - 4), 255, np.uint8), 2)).save(
                root / "roi" / f"case{i:02d}_roi.png")
    return root


def _nnunet_3d(root: Path) -> Path:
    """5 NIfTI cases of odd, anisotropic sizes in nnU-Net v2's raw layout."""
    rng = np.random.default_rng(2)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    for i, shape in enumerate(SIZES_3D):
        label = _blob(shape, rng)
        image = 100 + 300 * label + rng.normal(0, 50, shape)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "imagesTr" / f"vol_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / "labelsTr" / f"vol_{i:03d}.nii.gz")
    meta = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "organ": 1}, "numTraining": len(SIZES_3D),
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("unseen")
    return {"grey": _folder_2d(base / "grey", colour=False, fov=False),
            "colour": _folder_2d(base / "colour", colour=True, fov=True),
            "nifti": _nnunet_3d(base / "nifti")}


def _model_overrides(name: str) -> list[str]:
    return [f"model.name={name}", f"model.args={json.dumps(TINY.get(name, {}))}"]


def _train_and_evaluate(config: str, overrides: list[str], tmp_path: Path) -> dict:
    run, report = tmp_path / "run", tmp_path / "eval"
    assert main(["train", "--config", config, "--out", str(run), "--no-progress", *overrides, *TRAIN]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test", "--out", str(report)]) == 0
    return json.loads((report / "metrics.json").read_text())


def _check_predicted_png(run: Path, image: Path, tmp_path: Path) -> None:
    """A mask predicted for ``image`` has its (odd) size and binary values."""
    out = tmp_path / "mask.png"
    assert main(["predict", "--checkpoint", str(run), "--input", str(image), "--output", str(out)]) == 0
    with Image.open(out) as mask, Image.open(image) as source:
        assert mask.size == source.size, (image, mask.size, source.size)
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 1, 255}


def check_2d(name: str, folders: dict[str, Path], tmp_path: Path) -> None:
    """Train and evaluate ``name`` through the DRIVE config on the grey folder (no FOV, 0/255 masks) and the
    colour one (FOV, class-index masks)."""
    for kind in ("grey", "colour"):
        data = [f"data.args.root={folders[kind]}", "data.args.images=img", "data.args.masks=seg",
                "data.args.image_suffix=''", "data.args.mask_suffix=_seg", "data.args.val_fraction=0.2",
                "data.args.test_fraction=0.3", "transforms.patch_size=[48, 48]"]
        data += (["data.args.fov=roi", "data.args.fov_suffix=_roi"] if kind == "colour" else ["data.args.fov=null"])
        metrics = _train_and_evaluate("drive", _model_overrides(name) + data, tmp_path / kind)
        assert metrics["info"]["cases"] == 2, (name, kind, metrics["info"])
        assert "dice" in json.dumps(metrics)
    # 45x99: a side below the 48x48 training patch and neither side a multiple of 16
    _check_predicted_png(tmp_path / "colour" / "run", folders["colour"] / "img" / "case02.png", tmp_path)


def check_3d(name: str, folders: dict[str, Path], tmp_path: Path) -> None:
    """Train and evaluate ``name`` through the ISBI-2012 3D config on the generated NIfTI folder."""
    data = ["data.name=nnunet", f"data.args={{root: {folders['nifti']}, val_fraction: 0.2, test_fraction: 0.4}}",
            "transforms.modality=mr", "transforms.patch_size=[16, 16, 8]"]
    metrics = _train_and_evaluate("isbi2012_3d", _model_overrides(name) + data, tmp_path)
    assert metrics["info"]["cases"] == 2, (name, metrics["info"])


SEGMENTATION = list_models(task="segmentation")
CASES_2D = [pytest.param(n, marks=() if n in FAST_2D else pytest.mark.slow) for n in SEGMENTATION
            if 2 in get_entry(n).variants]
CASES_3D = [pytest.param(n, marks=() if n in FAST_3D else pytest.mark.slow) for n in SEGMENTATION
            if 3 in get_entry(n).variants]


@pytest.mark.parametrize("name", CASES_2D)
def test_2d_folder_never_seen_trains_and_evaluates_by_config_change(name, folders, tmp_path):
    check_2d(name, folders, tmp_path)


@pytest.mark.parametrize("name", CASES_3D)
def test_3d_nifti_folder_never_seen_trains_and_evaluates_by_config_change(name, folders, tmp_path):
    check_3d(name, folders, tmp_path)
