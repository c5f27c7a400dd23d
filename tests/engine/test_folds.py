"""splits.json: what a run records of its split (case names where the dataset has them, sizes otherwise, the test
split or why there is none), and the check a resumed run makes against it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from medssm.data import SyntheticSegmentation
from medssm.engine.config import config_from_dict
from medssm.engine.folds import SPLITS_FILE, fold_dirs, save_or_check_splits, split_record


def _config(args: dict):
    return config_from_dict({"data": {"name": "synthetic", "args": args}, "train": {"max_steps": 1}})


def test_a_folded_run_records_every_split_by_case_name():
    args = {"num_samples": 9, "spatial_size": [16, 16], "fold": 2, "num_folds": 3}
    datasets = {split: SyntheticSegmentation(split=split, **args) for split in ("train", "val")}
    record = split_record(_config(args), datasets)
    test = SyntheticSegmentation(split="test", **args)
    assert (record["dataset"], record["fold"], record["num_folds"]) == ("synthetic", 2, 3)
    assert record["test"] == {"size": len(test), "cases": test.cases}
    assert record["train"]["cases"] == datasets["train"].cases and record["val"]["size"] == len(datasets["val"])


def test_without_case_names_the_sizes_are_recorded_and_checked(tmp_path):
    args = {"num_samples": 4, "spatial_size": [16, 16]}
    record = split_record(_config(args), {"train": SyntheticSegmentation(split="train", **args),
                                          "val": SyntheticSegmentation(2, split="val")})
    assert record["train"] == {"size": 4, "cases": None} and record["val"]["size"] == 2
    save_or_check_splits(tmp_path, record, resume=False, write=True)
    assert json.loads((tmp_path / SPLITS_FILE).read_text()) == record
    save_or_check_splits(tmp_path, record, resume=True, write=True)  # the same data: nothing to say
    grown = json.loads(json.dumps(record))
    grown["train"]["size"] = 5
    with pytest.raises(ValueError, match="another split .*the train split had 4 cases, now 5"):
        save_or_check_splits(tmp_path, grown, resume=True, write=True)


def test_case_changes_are_named_and_a_missing_test_split_is_not_an_error(tmp_path):
    record = {"dataset": "folder", "fold": None, "num_folds": None,
              "train": {"size": 2, "cases": ["a", "b"]}, "val": {"size": 1, "cases": ["c"]}, "test": None}
    save_or_check_splits(tmp_path, record, resume=False, write=True)
    changed = {**record, "train": {"size": 2, "cases": ["a", "d"]}}
    with pytest.raises(ValueError, match=r"the train split gained \['d'\] and lost \['b'\]"):
        save_or_check_splits(tmp_path, changed, resume=True, write=True)
    refolded = {**record, "fold": 1, "num_folds": 5}
    with pytest.raises(ValueError, match="fold was None, now 1; num_folds was None, now 5"):
        save_or_check_splits(tmp_path, refolded, resume=True, write=True)
    save_or_check_splits(tmp_path, {**record, "test": {"size": 3, "cases": ["e", "f", "g"]}}, resume=True,
                         write=True)
    folder = tmp_path / "data"  # test_fraction 0 and no folds: no test split, and the run does not need one
    for sub in ("images", "masks"):
        (folder / sub).mkdir(parents=True)
        for name in ("a", "b", "c"):
            Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / sub / f"{name}.png")
    config = config_from_dict({"data": {"name": "folder", "args": {"root": str(folder)}}, "train": {"max_steps": 1}})
    built = split_record(config, {})
    assert built["test"] is None and "the 'test' split is empty" in built["test_unavailable"]


def test_fold_folders_come_in_fold_order(tmp_path):
    for name in ("fold_10", "fold_2", "fold_x", "notes"):
        (tmp_path / name).mkdir()
    assert [p.name for p in fold_dirs(tmp_path)] == ["fold_2", "fold_10"]


def test_an_official_test_split_is_not_loaded():
    config = config_from_dict({"data": {"name": "medmnist", "args": {"path": "absent.npz"}}, "train": {"max_steps": 1}})
    record = split_record(config, {})
    assert record["test"] is None and "official test split of 'medmnist'" in record["test_unavailable"]
