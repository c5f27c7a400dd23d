"""NnUNetDataset on nnU-Net v2, MSD and nnU-Net v1 folder trees written here with nibabel (and Pillow for a
2D PNG dataset), plus the real nibabel/MONAI example volume pair when present."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from data_checks import check_batches
from PIL import Image

from medssm.data import NnUNetDataset, kfold_split

EXAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom_nifti_examples"
SHAPE = (8, 9, 10)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def case_arrays(i: int, channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    image = rng.normal(100 * (i + 1), 10, (channels, *SHAPE)).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[2:6, 2:6, 3:7] = 1
    label[3:5, 3:5, 4:6] = 2
    return image, label


def write_nnunet(root: Path, n: int = 5, channels: int = 2) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    arrays = {}
    for i in range(n):
        case = f"case_{i:03d}"
        image, label = case_arrays(i, channels)
        for c in range(channels):
            nib.save(nib.Nifti1Image(image[c], AFFINE), root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), root / "labelsTr" / f"{case}.nii.gz")
        arrays[case] = image, label
    names = {"0": "CT", "1": "noNorm"}
    meta = {"channel_names": {str(c): names.get(str(c), "MR") for c in range(channels)},
            "labels": {"background": 0, "organ": 1, "tumour": 2}, "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return arrays


def write_msd(root: Path, n: int = 3, per_channel: bool = False) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    arrays, training = {}, []
    for i in range(n):
        case = f"brain_{i:03d}"
        image, label = case_arrays(i, channels=2)
        if per_channel:  # nnU-Net v1's copy of an MSD task
            for c in range(2):
                nib.save(nib.Nifti1Image(image[c], AFFINE), root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
        else:  # MSD: one 4D file, channels last
            nib.save(nib.Nifti1Image(np.moveaxis(image, 0, -1), AFFINE), root / "imagesTr" / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(label, AFFINE), root / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
        arrays[case] = image, label
    meta = {"name": "BrainTumour", "modality": {"0": "FLAIR", "1": "T1w"},
            "labels": {"0": "background", "1": "edema", "2": "tumour"}, "numTraining": n, "training": training}
    (root / "dataset.json").write_text(json.dumps(meta))
    return arrays


def test_nnunet_v2_items_match_the_files(tmp_path):
    arrays = write_nnunet(tmp_path)
    ds = NnUNetDataset(tmp_path, "train", val_fraction=0.2)
    val = NnUNetDataset(tmp_path, "val", val_fraction=0.2)
    assert ds.layout == "nnunet" and len(ds) == 4 and len(val) == 1 and not set(ds.cases) & set(val.cases)
    assert (ds.task, ds.spatial_dims, ds.in_channels, ds.num_classes) == ("segmentation", 3, 2, 3)
    assert ds.label_names == ["background", "organ", "tumour"] and ds.modality == "mr"
    item = ds[1]
    image, label = arrays[item["name"]]
    assert torch.equal(item["image"], torch.from_numpy(image))  # channel order _0000, _0001
    assert item["label"].dtype == torch.int64 and torch.equal(item["label"][0], torch.from_numpy(label).long())
    assert item["affine"].dtype == torch.float64 and torch.allclose(item["affine"], torch.from_numpy(AFFINE))
    assert item["spacing"].dtype == torch.float64 and item["spacing"].tolist() == [1.5, 1.5, 3.0]
    batch = check_batches(ds)
    assert batch["image"].shape == (2, 2, *SHAPE) and batch["affine"].shape == (2, 4, 4)


def test_seeded_folds_and_a_split_file_are_two_ways(tmp_path):
    names = sorted(write_nnunet(tmp_path, n=5))
    for fold in range(2):
        got = {split: NnUNetDataset(tmp_path, split, fold=fold, num_folds=2, fold_seed=4).cases
               for split in ("train", "val", "test")}
        assert got == kfold_split(names, fold, 2, val_fraction=0.2, seed=4)
    (tmp_path / "splits_final.json").write_text(json.dumps([{"train": names[:3], "val": names[3:]}]))
    assert NnUNetDataset(tmp_path, "val", split_file=tmp_path / "splits_final.json", fold=0).cases == names[3:]
    with pytest.raises(ValueError, match="num_folds=2 makes seeded k folds, but split_file"):
        NnUNetDataset(tmp_path, "train", split_file=tmp_path / "splits_final.json", fold=0, num_folds=2)


def test_resampling_to_a_target_spacing(tmp_path):
    arrays = write_nnunet(tmp_path, n=2)
    ds = NnUNetDataset(tmp_path, "train", val_fraction=0, spacing=(3.0, 3.0, 3.0))
    item = ds[0]
    assert item["image"].shape == (2, 4, 5, 10) and item["label"].shape == (1, 4, 5, 10)
    assert item["spacing"].tolist() == pytest.approx([3.0, 3.0, 3.0])
    assert item["label"].dtype == torch.int64 and set(item["label"].unique().tolist()) <= {0, 1, 2}
    assert int((item["label"] == 1).sum()) > 0  # nearest keeps the labels, the organ survives
    mean_in, mean_out = arrays[item["name"]][0][0].mean(), item["image"][0].mean().item()
    assert abs(mean_out - mean_in) < 5  # bilinear keeps the intensity level
    with pytest.raises(ValueError, match=r"spacing \(1.0, 1.0\) needs one value per spatial axis \(3\)"):
        NnUNetDataset(tmp_path, val_fraction=0, spacing=(1.0, 1.0))


@pytest.mark.parametrize("per_channel", [False, True])
def test_msd_and_nnunet_v1_layouts(tmp_path, per_channel):
    arrays = write_msd(tmp_path, per_channel=per_channel)
    ds = NnUNetDataset(tmp_path, "test", val_fraction=0, test_fraction=1)
    assert ds.layout == "msd" and len(ds) == 3 and ds.in_channels == 2 and ds.num_classes == 3
    assert ds.label_names == ["background", "edema", "tumour"]
    item = ds[2]
    image, label = arrays[item["name"]]
    assert item["name"] == "brain_002"
    assert torch.equal(item["image"], torch.from_numpy(image)) and torch.equal(item["label"][0],
                                                                               torch.from_numpy(label).long())
    check_batches(ds, batch_size=3)


def test_2d_png_dataset_with_rgb_in_one_file(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    for case in ("road_1", "road_2"):
        Image.fromarray(rgb).save(tmp_path / "imagesTr" / f"{case}_0000.png")
        Image.fromarray(np.eye(6, 7, dtype=np.uint8)).save(tmp_path / "labelsTr" / f"{case}.png")
    meta = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "road": 1},
            "numTraining": 2, "file_ending": ".png"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    ds = NnUNetDataset(tmp_path, val_fraction=0)
    assert (ds.spatial_dims, ds.in_channels, ds.modality) == (2, 3, "raster")
    item = ds[0]
    torch.testing.assert_close(item["image"], torch.from_numpy(np.moveaxis(rgb, -1, 0) / 255.0).float())
    assert torch.equal(item["label"][0], torch.from_numpy(np.eye(6, 7)).long())
    check_batches(ds)


def test_ct_channels_give_the_ct_preset(tmp_path):
    write_nnunet(tmp_path, n=2, channels=1)
    assert NnUNetDataset(tmp_path, val_fraction=0).modality == "ct"


def test_errors_name_the_case_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.json not found"):
        NnUNetDataset(tmp_path)
    write_nnunet(tmp_path, n=3)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "file_ending"}))
    with pytest.raises(ValueError, match=r"dataset.json: missing keys \['file_ending'\] of an nnunet dataset.json"):
        NnUNetDataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match=r"neither an nnU-Net v2 dataset.json .*found \['name'\]"):
        NnUNetDataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "numTraining": 7}))
    with pytest.raises(ValueError, match="numTraining is 7 but .*labelsTr holds 3"):
        NnUNetDataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "organ": 2}}))
    with pytest.raises(ValueError, match=r"label values must be 0..1, got \[0, 2\]"):
        NnUNetDataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "organ": 1}}))
    ds = NnUNetDataset(tmp_path, val_fraction=0)
    with pytest.raises(ValueError, match=r"case 'case_000': label .*case_000.nii.gz holds values \[2\] not among"):
        ds[0]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))

    image, label = case_arrays(1)
    nib.save(nib.Nifti1Image(label[:, :, :5], AFFINE), tmp_path / "labelsTr" / "case_001.nii.gz")
    ds = NnUNetDataset(tmp_path, val_fraction=0)
    with pytest.raises(ValueError, match=r"'case_001': label .* has shape \(8, 9, 5\) but the image .*\(8, 9, 10\)"):
        ds[1]
    nib.save(nib.Nifti1Image(image[1, :, :, :5], AFFINE), tmp_path / "imagesTr" / "case_002_0001.nii.gz")
    with pytest.raises(ValueError, match="case 'case_002': channel files have different shapes"):
        ds[2]
    (tmp_path / "imagesTr" / "case_002_0001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case 'case_002': channel files not found: .*case_002_0001.nii.gz"):
        NnUNetDataset(tmp_path)


def test_msd_errors(tmp_path):
    write_msd(tmp_path, n=2)
    (tmp_path / "imagesTr" / "brain_001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"case 'brain_001': image file .*brain_001.nii.gz not found"):
        NnUNetDataset(tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "training": meta["training"][:1],
                                                       "modality": {"0": "FLAIR", "2": "T1w"}}))
    with pytest.raises(ValueError, match=r"'modality' keys must be 0..1, got \[0, 2\]"):
        NnUNetDataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{broken")
    with pytest.raises(ValueError, match="dataset.json: not valid JSON"):
        NnUNetDataset(tmp_path)


@pytest.mark.skipif(not (EXAMPLES / "monai" / "anatomical_label.nii.gz").exists(),
                    reason="shared NIfTI examples not present")
def test_real_volume_and_label_pair_as_an_msd_task(tmp_path):
    """nibabel's anatomical.nii with MONAI's matching label volume, linked into an MSD-shaped folder."""
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "imagesTr" / "anat.nii").symlink_to(EXAMPLES / "nibabel" / "anatomical.nii")
    (tmp_path / "labelsTr" / "anat.nii.gz").symlink_to(EXAMPLES / "monai" / "anatomical_label.nii.gz")
    values = np.unique(np.asanyarray(nib.load(EXAMPLES / "monai" / "anatomical_label.nii.gz").dataobj))
    labels = {str(int(v)): f"class{int(v)}" for v in range(int(values.max()) + 1)}
    meta = {"modality": {"0": "MRI"}, "labels": labels, "numTraining": 1,
            "training": [{"image": "./imagesTr/anat.nii", "label": "./labelsTr/anat.nii.gz"}]}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    ds = NnUNetDataset(tmp_path, "test", val_fraction=0, test_fraction=1)
    item = ds[0]
    assert item["image"].shape == (1, 33, 41, 25) and item["label"].shape == (1, 33, 41, 25)
    assert item["spacing"].tolist() == [2.0, 2.0, 2.0]
    assert set(item["label"].unique().tolist()) == set(values.astype(int).tolist())
