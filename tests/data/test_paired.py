"""PairedImageFolder on noisy/clean folders written here (both layouts; 8-bit PNG, RGB, 16-bit TIF, NIfTI),
its error messages, a short training run on it, and the real Duke OCT folder when present."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from data_checks import check_batches, check_item
from PIL import Image

from medssm.data import PairedImageFolder, build_dataset, train_transforms

DUKE = Path(__file__).resolve().parents[3] / "shared" / "data" / "restoration" / "duke_oct_bioptigen"


def noisy_clean(rng: np.random.Generator, size: tuple[int, ...], dtype=np.uint8) -> tuple[np.ndarray, np.ndarray]:
    """A smooth clean image and clean + Gaussian noise, clipped to the dtype's range."""
    top = np.iinfo(dtype).max
    clean = rng.integers(top // 4, 3 * top // 4, size).astype(np.float64)
    noisy = np.clip(clean + rng.normal(0, top / 10, size), 0, top)
    return noisy.astype(dtype), clean.astype(dtype)


def write_folders(root: Path, n: int = 5, size: tuple[int, ...] = (12, 10), suffixes: tuple[str, str] = ("", ""),
                  ext: str = "png", dtype=np.uint8) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``root/noisy/<key><suffix>.<ext>`` and ``root/clean/<key><suffix>.<ext>``; returns {key: (noisy, clean)}."""
    (root / "noisy").mkdir(parents=True)
    (root / "clean").mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(n):
        key = f"case{i:02d}"
        noisy, clean = noisy_clean(rng, size, dtype)
        Image.fromarray(noisy).save(root / "noisy" / f"{key}{suffixes[0]}.{ext}")
        Image.fromarray(clean).save(root / "clean" / f"{key}{suffixes[1]}.{ext}")
        arrays[key] = noisy, clean
    return arrays


def write_cases(root: Path, n: int = 10, size: tuple[int, ...] = (12, 10)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The Duke layout: ``root/NN/noisy.png`` and ``root/NN/clean_average.png``."""
    rng = np.random.default_rng(1)
    arrays = {}
    for i in range(n):
        case = root / f"{i + 1:02d}"
        case.mkdir(parents=True)
        noisy, clean = noisy_clean(rng, size)
        Image.fromarray(noisy).save(case / "noisy.png")
        Image.fromarray(clean).save(case / "clean_average.png")
        arrays[case.name] = noisy, clean
    (root / "README.txt").write_text("loose files next to the case folders are ignored")
    return arrays


def test_folders_layout_pairs_by_key_and_scales_8_bit(tmp_path):
    arrays = write_folders(tmp_path, suffixes=("_noisy", "_gt"))
    args = {"noisy_suffix": "_noisy", "clean_suffix": "_gt"}
    train = PairedImageFolder(tmp_path, "train", **args)
    val = PairedImageFolder(tmp_path, "val", **args)
    assert len(train) == 4 and len(val) == 1 and sorted(train.cases + val.cases) == sorted(arrays)
    assert train.task == "restoration" and train.spatial_dims == 2 and train.in_channels == 1
    assert train.num_classes == 1 and train.split == "train" and train.transform is None
    for item in (train[0], train[3], val[0]):
        noisy, clean = arrays[item["name"]]
        assert torch.equal(item["image"][0], torch.from_numpy(noisy).float() / 255)
        assert torch.equal(item["label"][0], torch.from_numpy(clean).float() / 255)
    batch = check_batches(train, batch_size=3)
    assert batch["image"].shape == (3, 1, 12, 10) and batch["label"].dtype == torch.float32
    built = build_dataset("paired", "val", root=str(tmp_path), **args)
    assert isinstance(built, PairedImageFolder) and built.cases == val.cases


def test_cases_layout_splits_and_split_file(tmp_path):
    arrays = write_cases(tmp_path)
    args = {"layout": "cases", "clean": "clean_average", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 3}
    splits = {split: PairedImageFolder(tmp_path, split, **args) for split in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(sum((ds.cases for ds in splits.values()), [])) == sorted(arrays)
    item = splits["test"][1]
    noisy, clean = arrays[item["name"]]
    assert torch.equal(item["image"][0], torch.from_numpy(noisy).float() / 255)
    assert torch.equal(item["label"][0], torch.from_numpy(clean).float() / 255)
    check_batches(splits["train"], batch_size=4)
    split_file = tmp_path / "split.json"
    split_file.write_text('{"train": ["01", "02"], "val": ["03"], "test": ["10"]}')
    assert PairedImageFolder(tmp_path, "test", layout="cases", clean="clean_average",
                             split_file=split_file).cases == ["10"]


def test_rgb_16_bit_tif_and_nifti(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    for i, name in enumerate(("noisy", "clean")):
        (tmp_path / "rgb" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb[i]).save(tmp_path / "rgb" / "a" / f"{name}.png")
    colour = PairedImageFolder(tmp_path / "rgb", layout="cases", val_fraction=0)
    assert colour.in_channels == colour.num_classes == 3
    assert torch.equal(colour[0]["label"], torch.from_numpy(np.moveaxis(rgb[1], -1, 0)).float() / 255)

    arrays = write_folders(tmp_path / "tif", n=3, size=(7, 9), ext="tif", dtype=np.uint16)
    deep = PairedImageFolder(tmp_path / "tif", "train", val_fraction=0)
    item = deep[2]
    noisy, clean = arrays[item["name"]]
    assert clean.max() > 255 and torch.equal(item["label"][0], torch.from_numpy(clean.astype(np.float32)) / 65535)
    torch.testing.assert_close(item["image"][0], torch.from_numpy(noisy / 65535.0).float())
    check_item(item, deep)

    import nibabel as nib

    volume = np.random.default_rng(3).normal(0, 300, (2, 5, 6, 4)).astype(np.float32)  # e.g. HU, kept as stored
    for i, name in enumerate(("noisy", "clean")):
        (tmp_path / "nii" / name).mkdir(parents=True)
        nib.save(nib.Nifti1Image(volume[i], np.eye(4)), tmp_path / "nii" / name / "ct1.nii.gz")
    nifti = PairedImageFolder(tmp_path / "nii", val_fraction=0)
    assert nifti.spatial_dims == 3 and nifti.in_channels == 1 and nifti.cases == ["ct1"]
    assert torch.equal(nifti[0]["image"][0], torch.from_numpy(volume[0]))
    assert torch.equal(nifti[0]["label"][0], torch.from_numpy(volume[1]))
    check_batches(nifti)


def test_train_transforms_crop_noisy_and_clean_together(tmp_path):
    write_cases(tmp_path, n=3, size=(40, 30))
    ds = PairedImageFolder(tmp_path, layout="cases", clean="clean_average", val_fraction=0,
                           transform=train_transforms("restoration", 2, patch_size=(16, 24)))
    ds.transform.set_random_state(0)
    plain = PairedImageFolder(tmp_path, layout="cases", clean="clean_average", val_fraction=0)
    for index in range(3):
        item, whole = ds[index], plain[index]
        assert item["image"].shape == item["label"].shape == (1, 16, 24)
        check_item(item, ds)
        # The clean patch must come from the noisy patch's position in the same flipped view of the case
        # (a 16x24 patch only turns by 180 degrees, which is both flips).
        views = _flipped(whole["image"][0], whole["label"][0])
        matches = [(clean_view, y, x) for noisy_view, clean_view in views
                   for y in range(40 - 16 + 1) for x in range(30 - 24 + 1)
                   if torch.equal(noisy_view[y:y + 16, x:x + 24], item["image"][0])]
        assert matches
        for clean_view, y, x in matches:
            assert torch.equal(clean_view[y:y + 16, x:x + 24], item["label"][0])


def _flipped(noisy: torch.Tensor, clean: torch.Tensor):
    for dims in ((), (0,), (1,), (0, 1)):
        yield (noisy.flip(dims), clean.flip(dims)) if dims else (noisy, clean)


def test_errors_name_the_files(tmp_path):
    write_folders(tmp_path, n=3)
    (tmp_path / "clean" / "case01.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"case01.png: no clean image for case 'case01' in .*clean "
                                                r"\(looked for 'case01.\*'\)"):
        PairedImageFolder(tmp_path, val_fraction=0)
    Image.fromarray(np.zeros((12, 9), np.uint8)).save(tmp_path / "clean" / "case01.png")
    ds = PairedImageFolder(tmp_path, val_fraction=0)
    with pytest.raises(ValueError, match=r"shape mismatch: noisy .*noisy/case01.png is \(1, 12, 10\) \(C, \*spatial\) "
                                         r"but clean .*clean/case01.png is \(1, 12, 9\)"):
        ds[1]
    good = (tmp_path / "clean" / "case00.png").read_bytes()
    (tmp_path / "clean" / "case01.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="clean/case01.png: cannot read image"):
        ds[1]
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(tmp_path / "noisy" / "case02.png")
    with pytest.raises(ValueError, match=r"case02.png: shape \(3, 12, 10\) .* has 1 channel\(s\)"):
        ds[2]
    with pytest.raises(ValueError, match="case00.png: noisy file name does not end with the noisy_suffix '_n'"):
        PairedImageFolder(tmp_path, noisy_suffix="_n")
    with pytest.raises(FileNotFoundError, match="clean folder not found: .*target"):
        PairedImageFolder(tmp_path, clean="target")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: no noisy files \(.png"):
        PairedImageFolder(tmp_path, noisy="empty")
    with pytest.raises(ValueError, match=r"the 'val' split is empty \(3 cases, val_fraction=0"):
        PairedImageFolder(tmp_path, "val", val_fraction=0)
    with pytest.raises(FileNotFoundError, match="dataset folder not found: .*missing"):
        PairedImageFolder(tmp_path / "missing")
    with pytest.raises(ValueError, match="layout must be one of"):
        PairedImageFolder(tmp_path, layout="pairs")


def test_case_folder_errors_name_the_folder(tmp_path):
    write_cases(tmp_path, n=3)
    (tmp_path / "02" / "clean_average.png").rename(tmp_path / "02" / "clean.png")
    with pytest.raises(FileNotFoundError, match=r"02: case folder has no clean file 'clean_average.\*' \(found "
                                                r"\['clean.png', 'noisy.png'\]\)"):
        PairedImageFolder(tmp_path, layout="cases", clean="clean_average")
    (tmp_path / "02" / "clean.png").rename(tmp_path / "02" / "clean_average.png")
    (tmp_path / "03" / "noisy.png").unlink()
    with pytest.raises(FileNotFoundError, match="03: case folder has no noisy file 'noisy.*'"):
        PairedImageFolder(tmp_path, layout="cases", clean="clean_average")
    Image.open(tmp_path / "01" / "noisy.png").save(tmp_path / "03" / "noisy.tif")  # any image extension will do
    assert len(PairedImageFolder(tmp_path, layout="cases", clean="clean_average", val_fraction=0)) == 3
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "01" / "noisy.tif")
    with pytest.raises(ValueError, match=r"01: more than one noisy file: \['noisy.png', 'noisy.tif'\]"):
        PairedImageFolder(tmp_path, layout="cases", clean="clean_average")
    with pytest.raises(ValueError, match="apply to layout 'folders' only"):
        PairedImageFolder(tmp_path, layout="cases", clean_suffix="_gt")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ValueError, match="nothing: no case folders"):
        PairedImageFolder(tmp_path / "nothing", layout="cases")


def test_a_short_restoration_run(tmp_path):
    from medssm.engine.config import config_from_dict
    from medssm.engine.trainer import train

    write_folders(tmp_path / "data", n=8, size=(32, 32))
    config = config_from_dict({
        "model": {"name": "mini_mamba_restorer", "args": {"features": [8, 16], "mamba_stages": 1}},
        "data": {"name": "paired", "args": {"root": str(tmp_path / "data"), "val_fraction": 0.25}},
        "transforms": {"patch_size": [24, 24]},
        "train": {"max_steps": 2, "batch_size": 2, "val_every": 2, "checkpoint_every": 2},
    })
    summary = train(config, tmp_path / "run", progress=False)
    metrics = summary["val_metrics"]
    assert summary["step"] == 2 and summary["best_metric"] == "psnr"
    assert all(math.isfinite(metrics[key]) for key in ("psnr", "ssim", "mae")), metrics


@pytest.mark.skipif(not DUKE.exists(), reason="shared Duke OCT data not present")
def test_real_duke_oct():
    args = {"layout": "cases", "clean": "clean_average", "val_fraction": 0.2, "test_fraction": 0.2, "seed": 0}
    splits = {split: PairedImageFolder(DUKE, split, **args) for split in ("train", "val", "test")}
    cases = sorted(sum((ds.cases for ds in splits.values()), []))
    assert cases == [f"{i:02d}" for i in range(1, 19)] and min(len(ds) for ds in splits.values()) >= 3
    everything = PairedImageFolder(DUKE, "test", layout="cases", clean="clean_average", val_fraction=0,
                                   test_fraction=1)
    assert everything.in_channels == 1 and everything.spatial_dims == 2
    first = everything[everything.cases.index("01")]
    assert first["image"].shape == first["label"].shape == (1, 450, 900)
    assert everything[everything.cases.index("09")]["image"].shape == (1, 401, 900)
    # PSNR over the frame, peak 1 on [0, 1] (= peak 255 on the 8-bit files). The folder's published noisy-input
    # figure, 17.74 dB, is the mean over the 18 subjects; subject 01 alone is close to it.
    mse = (first["image"].double() - first["label"].double()).square().mean().item()
    psnr = 10 * math.log10(1.0 / mse)
    print(f"Duke OCT subject 01: noisy-input PSNR {psnr:.2f} dB (published 18-subject mean 17.74 dB)")
    assert 14 < psnr < 22
    check_batches(splits["val"])
