"""MIL datasets: the colon patch bags (real data when present, a synthetic .mat for the 1-based centres) and
CLAM-layout feature bags (.h5 and .safetensors) trained, evaluated and predicted through the command line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from safetensors.torch import save_file

from medssm.cli import main
from medssm.data import build_dataset
from medssm.data.mil_colon import BagAugment, bag_transforms, centre_pixels, extract_patches, read_case, read_centres

COLON = Path(__file__).resolve().parents[3] / "shared" / "data" / "pathology_mil" / "colon_crchistophenotypes"
if not COLON.exists():
    COLON = Path("/work/shared/data/pathology_mil/colon_crchistophenotypes")


def _colon_case(folder: Path, name: str, epithelial: list, others: list) -> None:
    """A tiny colon-layout case: a 20x30 RGB image whose pixel (r, c) has red = c, green = r, and .mat files."""
    case = folder / name
    case.mkdir(parents=True)
    rows, cols = np.mgrid[0:20, 0:30]
    Image.fromarray(np.stack([cols, rows, np.zeros_like(rows)], -1).astype(np.uint8)).save(case / f"{name}.png")
    for kind, centres in (("epithelial", epithelial), ("fibroblast", others), ("inflammatory", []), ("others", []),
                          ("detection", epithelial + others)):
        scipy.io.savemat(case / f"{name}_{kind}.mat", {"detection": np.array(centres, dtype=np.float64).reshape(-1, 2)})


def test_matlab_centres_are_one_based_and_patches_are_centred_on_them(tmp_path):
    _colon_case(tmp_path, "img1", epithelial=[[1, 1], [11.4, 6.6]], others=[[30, 20]])
    assert read_centres(tmp_path / "img1" / "img1_epithelial.mat").tolist() == [[0, 0], [10.4, 5.6]]
    image, centres, label = read_case(tmp_path / "img1" / "img1.png")
    assert label == 1 and image.shape == (20, 30, 3)
    pixels = centre_pixels(centres, 20, 30)
    assert pixels.tolist() == [[0, 0], [10, 6], [29, 19]]  # (column, row), rounded and inside the image
    patches = extract_patches(image, pixels, 5)
    assert patches.shape == (3, 3, 5, 5)
    # the centre pixel of each patch is the nucleus pixel: red = column, green = row
    assert [(int(p[0, 2, 2]), int(p[1, 2, 2])) for p in patches] == [(0, 0), (10, 6), (29, 19)]
    # mirror padding at the border: the pixel left of column 0 is column 1
    assert patches[0, 0, 2, 1] == 1 and patches[2, 0, 2, 3] == 28
    with pytest.raises(ValueError, match="patch_size must be a positive odd number"):
        extract_patches(image, pixels, 4)


def test_bag_instances_are_in_raster_order_not_class_order(tmp_path):
    # the epithelial nucleus (listed first in the class files) lies below the fibroblasts
    _colon_case(tmp_path, "img1", epithelial=[[5, 15]], others=[[20, 3], [4, 3], [9, 10]])
    _, centres, label = read_case(tmp_path / "img1" / "img1.png")
    assert label == 1 and centres.tolist() == [[3, 2], [19, 2], [8, 9], [4, 14]]  # 0-based, by row then column
    _, detected, _ = read_case(tmp_path / "img1" / "img1.png", nuclei="detection")
    assert detected.tolist() == centres.tolist()


def test_colon_layout_bags_and_their_errors(tmp_path):
    for i in range(4):
        _colon_case(tmp_path, f"img{i}", epithelial=[[5, 5]] if i % 2 else [], others=[[10, 10], [20, 3]])
    ds = build_dataset("colon_mil", "test", root=str(tmp_path), fold=1, num_folds=2, patch_size=9)
    assert len(ds) == 2 and ds.labels.tolist() == [int(name in ("img1", "img3")) for name in ds.cases]
    item = ds[0]
    assert item["image"].shape == (2 + int(ds.labels[0]), 3, 9, 9) and item["name"] == ds.cases[0]
    assert item["image"].dtype == torch.float32 and 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
    assert item["coords"].shape == (len(item["image"]), 2) and item["label"].dtype == torch.int64
    assert ds.task == "mil" and ds.num_classes == 2 and ds.in_channels == 3
    (tmp_path / "img0" / "img0_others.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match="img0_others.mat: cannot read the MATLAB file"):
        read_case(tmp_path / "img0" / "img0.png")
    (tmp_path / "img2" / "img2_fibroblast.mat").unlink()
    with pytest.raises(FileNotFoundError, match="img2_fibroblast.mat: missing"):
        read_case(tmp_path / "img2" / "img2.png")


def test_bag_augment_moves_patches_by_the_dihedral_group_and_is_seeded():
    patches = torch.rand(50, 3, 5, 5)
    augmented = BagAugment(color_sigma=0.0).set_random_state(3)({"image": patches})["image"]
    group = [torch.rot90(p, k, (-2, -1)) for f in (False, True) for k in range(4)
             for p in [patches.flip(-1) if f else patches]]
    for i in range(50):
        assert any(torch.equal(augmented[i], g[i]) for g in group)
    assert not torch.equal(augmented, patches)
    again = BagAugment(color_sigma=0.0).set_random_state(3)({"image": patches})["image"]
    assert torch.equal(augmented, again)
    coloured = BagAugment(flips=False, rotations=False, color_sigma=0.1).set_random_state(0)({"image": patches})
    assert 0 < (coloured["image"] - patches).abs().mean() < 0.2
    identity = BagAugment(False, False, 0.0)({"image": patches})["image"]
    assert torch.equal(identity, patches)
    assert bag_transforms(type("Bags", (), {"instance_shape": (512,)})(), train=True) is None


@pytest.mark.skipif(not COLON.exists(), reason="colon MIL data absent")
def test_real_colon_set_follows_ilse():
    folds = [build_dataset("colon_mil", "test", root=str(COLON), fold=f, num_folds=10) for f in range(10)]
    assert sum(len(f) for f in folds) == 100 and sum(int(f.labels.sum()) for f in folds) == 51
    assert len({c for f in folds for c in f.cases}) == 100
    train = build_dataset("colon_mil", "train", root=str(COLON), fold=0, num_folds=10)
    val = build_dataset("colon_mil", "val", root=str(COLON), fold=0, num_folds=10)
    assert (len(train), len(val)) == (81, 9) and not set(train.cases) & set(val.cases) & set(folds[0].cases)
    item = folds[0][0]
    assert item["image"].shape[1:] == (3, 27, 27) and item["image"].shape[0] == item["coords"].shape[0]


def _feature_bags(root: Path, sizes: dict[str, int], width: int = 16) -> Path:
    """CLAM-layout bags (half .h5, half .safetensors) whose label shows in the features, and a labels CSV."""
    root.mkdir(parents=True)
    rows = []
    for i, (slide, n) in enumerate(sizes.items()):
        label = "tumor" if i % 2 else "normal"
        features = np.random.default_rng(i).normal(size=(n, width)).astype(np.float32)
        features[:, 0] += 3.0 * (label == "tumor")
        coords = np.stack([np.arange(n) * 256, np.zeros(n)], 1).astype(np.int64)
        if i % 2:
            with h5py.File(root / f"{slide}.h5", "w") as f:
                f["features"], f["coords"] = features, coords
        else:
            save_file({"features": torch.from_numpy(features), "coords": torch.from_numpy(coords)},
                      root / f"{slide}.safetensors")
        rows.append((slide, label))
    labels = root.parent / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([("slide_id", "label"), *rows])
    return labels


def test_feature_bags_train_evaluate_and_predict_through_the_command_line(tmp_path, capsys):
    labels = _feature_bags(tmp_path / "features", {f"slide{i}": 3 + 2 * i for i in range(10)})
    ds = build_dataset("feature_bags", "train", root=str(tmp_path / "features"), labels=str(labels), fold=0,
                       num_folds=5)
    assert ds.class_names == ["normal", "tumor"] and ds.in_channels == 16 and len(ds) == 7
    run = tmp_path / "run"
    overrides = ["model.name=mamba_mil", "model.args={dim: 32, rate: 2}", "data.name=feature_bags",
                 f"data.args={{root: {tmp_path / 'features'}, labels: {labels}, fold: 0, num_folds: 5}}",
                 "train.batch_size=1", "train.accumulate=2", "train.max_steps=3", "train.val_every=3",
                 "train.optimizer=adam", "train.device=cpu"]
    assert main(["train", "--out", str(run), "--no-progress", *overrides]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"accuracy", "balanced_accuracy", "auc"} <= set(metrics["metrics"] if "metrics" in metrics else metrics)
    per_case = list(csv.DictReader(open(tmp_path / "eval" / "per_case.csv")))
    assert len(per_case) == 2 and {"case", "label", "prob_1"} <= set(per_case[0])
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run), "--input", str(tmp_path / "features"), "--output",
                 str(out)]) == 0
    predictions = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(predictions) == 10 and abs(float(predictions[0]["prob_0"]) + float(predictions[0]["prob_1"]) - 1) < 1e-5
    instances = list(csv.DictReader(open(out / "slide3_instances.csv")))
    assert len(instances) == 9 and instances[1]["x"] == "256"
    assert abs(sum(float(r["score"]) for r in instances) - 1) < 1e-4  # attention weights over the bag
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), "--input", str(tmp_path / "features"), "--output",
                 str(out)]) == 2  # refuses to overwrite
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("damage,message", [
    ("missing", "slide 'slide2' of .*labels.csv has no feature file slide2.h5 or slide2.safetensors"),
    ("corrupt", "slide1.h5: cannot read the feature bag"),
    ("width", "slide3.h5: features are 9 wide, but .*slide0.safetensors has 16"),
    ("empty", "slide3.h5: an empty bag"),
])
def test_bad_feature_bags_give_clear_errors(tmp_path, damage, message):
    labels = _feature_bags(tmp_path / "f", {f"slide{i}": 4 for i in range(6)})
    root = tmp_path / "f"
    if damage == "missing":
        (root / "slide2.safetensors").unlink()
    elif damage == "corrupt":
        (root / "slide1.h5").write_bytes(b"\x89HDF garbage")
    else:
        with h5py.File(root / "slide3.h5", "w") as f:
            f["features"] = np.zeros((4, 9) if damage == "width" else (0, 16), np.float32)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        build_dataset("feature_bags", "train", root=str(root), labels=str(labels), val_fraction=0.0)
