"""The `medssm` command: train -> evaluate -> predict on generated 3D data through the command line, the
model table, and clear errors (exit code 2, no traceback) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medssm.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "dicom_nifti_examples"

TINY_3D = ["model.name=mini_mamba_unet", "model.args.features=[8, 16]", "model.args.mamba_stages=1",
           "data.args={num_samples: 8, spatial_size: [24, 24, 24], seed: 0}", "transforms.patch_size=[16, 16, 16]",
           "train.max_steps=2", "train.batch_size=2", "train.val_every=2", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def run_3d(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--config", "demo", "--out", str(run), "--no-progress", *TINY_3D]) == 0
    return run


def _nifti(path: Path, shape=(33, 41, 25)) -> Path:
    rng = np.random.default_rng(0)
    affine = np.array([[-2.0, 0.1, 0.0, 32.0], [0.05, 2.0, 0.0, -40.0], [0.0, 0.0, 2.5, -16.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image((rng.random(shape) * 100).astype(np.int16), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    nib.save(image, path)
    return path


def test_train_evaluate_predict_through_the_command_line(run_3d, tmp_path, capsys):
    saved = json.loads((run_3d / "checkpoints" / "best" / "checkpoint.json").read_text())
    assert saved["model_args"]["spatial_dims"] == 3 and saved["config"]["train"]["max_steps"] == 2

    assert main(["evaluate", "--checkpoint", str(run_3d), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert "dice" in json.dumps(metrics) and (tmp_path / "eval" / "predictions.png").stat().st_size > 1000
    assert "dice" in capsys.readouterr().out

    source = _nifti(tmp_path / "anatomical_like.nii")
    out = tmp_path / "mask.nii.gz"
    assert main(["predict", "--checkpoint", str(run_3d), "--input", str(source), "--output", str(out)]) == 0
    mask, original = nib.load(out), nib.load(source)
    np.testing.assert_allclose(mask.affine, original.affine)
    assert mask.shape == original.shape and set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    assert int(mask.header["sform_code"]) == 2 and int(mask.header["qform_code"]) == 1

    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run_3d), "--input", str(source), "--output", str(out)]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(run_3d), "--input", str(source), "--output", str(out),
                 "--overwrite", "--probabilities", "--tta"]) == 0
    assert nib.load(tmp_path / "mask_prob.nii.gz").shape == (*original.shape, 2)


@pytest.mark.skipif(not SHARED.exists(), reason="shared example data not present")
def test_predict_on_nibabels_anatomical_keeps_its_affine(run_3d, tmp_path):
    source = SHARED / "nibabel" / "anatomical.nii"
    out = tmp_path / "anatomical_mask.nii.gz"
    assert main(["predict", "--checkpoint", str(run_3d), "--input", str(source), "--output", str(out)]) == 0
    np.testing.assert_allclose(nib.load(out).affine, nib.load(source).affine)
    series_out = tmp_path / "ct.nii.gz"
    assert main(["predict", "--checkpoint", str(run_3d), "--input", str(SHARED / "monai" / "CT_DICOM"),
                 "--output", str(series_out)]) == 0
    assert nib.load(series_out).shape == (16, 16, 4)


def test_models_table(capsys):
    assert main(["models", "mini_*", "--counts"]) == 0
    out = capsys.readouterr().out
    assert "mini_mamba_unet" in out and "segmentation" in out and "1,703,042" in out
    assert main(["models", "nothing_*"]) == 1


def test_models_listing_builds_no_model(capsys, monkeypatch):
    # issue 26, defect 8: listing built every model to count it (6 s then, 17 s with today's registry)
    import medssm.models

    def refuse(*args, **kwargs):
        raise AssertionError("the plain listing must not build models")

    monkeypatch.setattr(medssm.models, "create_model", refuse)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "umamba_enc" in out and "medssm models --counts" in out


@pytest.mark.parametrize("argv,message", [
    (["train", "--config", "nope", "--out", "x"], "neither a file nor a shipped config"),
    (["train", "--config", "demo", "--out", "x", "train.max_step=3"], "unknown key\\(s\\) \\['max_step'\\]"),
    (["train", "--config", "demo", "--out", "x", "model.name=nope"], "unknown model 'nope'"),
    (["train", "--config", "demo", "--out", "x", "data.name=nope"], "nope"),
    (["train", "--resume", "--config", "demo", "--out", "x"], "--resume continues a run"),
    (["predict", "--checkpoint", "no_such_run", "--input", "a.png", "--output", "b.png"], "does not exist"),
    (["evaluate", "--checkpoint", "a", "--checkpoint", "b"], "several --checkpoint values .*give --out"),
    (["cv", "--config", "demo", "--folds", "1", "--out", "x"], "--folds must be an integer >= 2"),
    (["cv", "--config", "demo", "--folds", "3", "--fold", "3", "--out", "x"], "--fold must be in 0..2"),
    (["cv", "--config", "demo", "--folds", "3", "--out", "x", "data.name=medmnist", "data.args={path: a.npz}"],
     "takes no fold/num_folds"),
])
def test_bad_input_exits_2_with_a_clear_message(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and __import__("re").search(message, err), err


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The README's quick start: ~1.5 minutes on 2 cores."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    report = (out / "REPORT.md").read_text()
    assert "| dice |" in report
    dice = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert "dice" in json.dumps(dice)
    for name in ("run/curves.png", "evaluation/predictions.png", "inputs/case_0.png"):
        assert (out / name).stat().st_size > 1000, name
    from PIL import Image

    mask = np.array(Image.open(out / "predictions" / "case_0.png"))  # class indices 0..2
    assert mask.shape == (96, 96) and set(np.unique(mask)) == {0, 1, 2}
    assert main(["demo", "--out", str(out)]) == 2  # refuses to overwrite


def _nnunet_folder(root: Path, cases: int = 8) -> Path:
    """A one-channel nnU-Net v2 raw folder of 16x16x12 MR-like volumes, voxel size 1 x 1 x 2.5 mm."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    affine = np.diag([1.0, 1.0, 2.5, 1.0])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in (16, 16, 12)], indexing="ij"))
    rng = np.random.default_rng(0)
    for i in range(cases):
        centre = rng.uniform(5, 11, 3) * [1, 1, 0.75]
        label = (np.sqrt((((grid - centre[:, None, None, None]) * [[[[1]]], [[[1]]], [[[2.5]]]]) ** 2).sum(0)) < 4)
        image = 300 + 400 * label + rng.normal(0, 60, label.shape)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), root / "labelsTr" / f"case_{i:03d}.nii.gz")
    meta = {"channel_names": {"0": "T2"}, "labels": {"background": 0, "lesion": 1}, "numTraining": cases,
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_an_nnunet_folder_from_files_to_predicted_masks(tmp_path):
    root = _nnunet_folder(tmp_path / "Dataset001_Toy")
    run = tmp_path / "run"
    overrides = ["model.name=mini_mamba_unet", "model.args={features: [8, 16], mamba_stages: 1}", "data.name=nnunet",
                 f"data.args={{root: {root}, val_fraction: 0.25, test_fraction: 0.25}}", "transforms.modality=mr",
                 "transforms.patch_size=[16, 16, 8]", "train.max_steps=2", "train.batch_size=2", "train.val_every=2"]
    assert main(["train", "--config", "demo", "--out", str(run), "--no-progress", *overrides]) == 0
    meta = json.loads((run / "checkpoints" / "best" / "checkpoint.json").read_text())
    assert meta["data"]["train_size"] == 4 and len(meta["data"]["val_cases"]) == 2
    assert main(["evaluate", "--checkpoint", str(run), "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["info"]["split"] == "test" and report["info"]["cases"] == 2
    case = root / "imagesTr" / "case_000_0000.nii.gz"
    assert main(["predict", "--checkpoint", str(run), "--input", str(case), "--output", str(tmp_path / "p")]) == 0
    mask = nib.load(tmp_path / "p" / "case_000_0000.nii.gz")
    np.testing.assert_allclose(mask.affine, nib.load(case).affine)
    assert mask.shape == (16, 16, 12)


def test_predict_names_a_channel_mismatch(run_3d, tmp_path, capsys):
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((12, 12, 8, 2)).astype(np.float32), np.eye(4)), tmp_path / "two.nii.gz")
    assert main(["predict", "--checkpoint", str(run_3d), "--input", str(tmp_path / "two.nii.gz"), "--output",
                 str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "two.nii.gz" in err and "2 channel(s), but the model expects 1" in err
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.parametrize(("model", "image_shape", "classes"), [("mambaout", (32, 32, 3), 4),
                                                               ("vim", (20, 20, 12), 3)])
def test_a_medmnist_file_never_seen_trains_and_evaluates_by_config_change(tmp_path, model, image_shape, classes):
    """Issue 22: another size, channel count, class count and dimensionality than the shipped configs' files,
    through the BreastMNIST config with data and model overrides only."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.arange(n)[:, None] % classes
    np.savez(tmp_path / "unseen.npz", **arrays)
    run = tmp_path / "run"
    overrides = [f"model.name={model}", "model.args={}", f"data.args={{path: {tmp_path / 'unseen.npz'}, "
                 f"num_classes: {classes}}}", "train.max_steps=2", "train.batch_size=8", "train.val_every=2",
                 "train.checkpoint_every=2", "train.warmup_steps=0"]
    assert main(["train", "--config", "breastmnist", "--out", str(run), "--no-progress", *overrides]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--split", "test", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["info"]["cases"] == 8
    meta = json.loads((run / "checkpoints" / "best" / "checkpoint.json").read_text())
    spatial_dims = 3 if model == "vim" else 2
    in_channels = 3 if model == "mambaout" else 1
    assert meta["model_args"]["spatial_dims"] == spatial_dims and meta["model_args"]["in_channels"] == in_channels
    assert meta["model_args"]["out_channels"] == classes
