"""build_dataset: every registered name builds, and bad names or arguments give clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from data_checks import check_batches
from PIL import Image

from medssm.data import DATASETS, ImageMaskFolder, SyntheticSegmentation, UCRDataset, build_dataset


def test_registered_names():
    assert sorted(DATASETS) == ["colon_mil", "feature_bags", "folder", "medmnist", "nnunet", "paired", "physionet2012",
                                "slices", "synthetic", "ucr", "wfdb"]
    for cls in DATASETS.values():
        assert hasattr(cls, "__getitem__") and hasattr(cls, "__len__")


def test_build_passes_split_and_arguments(tmp_path):
    ds = build_dataset("synthetic", "val", num_samples=3, spatial_size=[32, 32])
    assert isinstance(ds, SyntheticSegmentation) and ds.split == "val" and len(ds) == 3
    check_batches(ds)
    (tmp_path / "T_TRAIN.tsv").write_text("1\t0\t1\n2\t1\t0\n1\t2\t2\n2\t3\t3\n1\t4\t4\n")
    (tmp_path / "T_TEST.tsv").write_text("1\t0\t1\n")
    ucr = build_dataset("ucr", "test", path=str(tmp_path))
    assert isinstance(ucr, UCRDataset) and len(ucr) == 1
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
        for key in "abcde":
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / folder / f"{key}.png")
    folder = build_dataset("folder", "val", root=str(tmp_path), val_fraction=0.4)
    assert isinstance(folder, ImageMaskFolder) and len(folder) == 2


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown dataset 'drive'; valid names: \[.*'folder', 'medmnist'"):
        build_dataset("drive", "train")
    with pytest.raises(TypeError, match=r"dataset 'synthetic' \(SyntheticSegmentation\) got unexpected keyword "
                                        r"arguments \['size'\]; it accepts \['num_samples', 'spatial_size'"):
        build_dataset("synthetic", "train", size=32)
    with pytest.raises(TypeError, match=r"dataset 'folder' \(ImageMaskFolder\) needs keyword arguments \['root'\]"):
        build_dataset("folder", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset("synthetic", "everything")
    with pytest.raises(ValueError, match=r"dataset 'medmnist' \(MedMNIST\) keeps its official train/val/test "
                                         r"splits and takes no fold/num_folds; .*\[.*'folder', 'nnunet', 'paired'"):
        build_dataset("medmnist", "train", path="x.npz", fold=0, num_folds=5)
