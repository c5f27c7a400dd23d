"""Seeded splits and split files: deterministic, disjoint, covering, with clear errors."""

from __future__ import annotations

import json
import re

import pytest

from medssm.data import kfold_split, load_split_file, seeded_split, select_cases
from medssm.data.splits import split_counts


def test_seeded_split_is_deterministic_disjoint_and_order_free():
    names = [f"case{i:03d}" for i in range(50)]
    a = seeded_split(names, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = seeded_split(list(reversed(names)), val_fraction=0.2, test_fraction=0.1, seed=3)
    assert a == b
    assert [len(a[s]) for s in ("train", "val", "test")] == [35, 10, 5]
    assert sorted(a["train"] + a["val"] + a["test"]) == names
    assert all(a[s] == sorted(a[s]) for s in a)
    assert seeded_split(names, 0.2, 0.1, seed=4)["val"] != a["val"]


@pytest.mark.parametrize(("n", "val", "test", "expected"), [
    (10, 0.2, 0.0, (2, 0)), (3, 0.2, 0.2, (1, 1)), (2, 0.2, 0.0, (1, 0)), (1, 0.2, 0.0, (0, 0)),
    (5, 0.0, 1.0, (0, 5)), (5, 0.5, 0.5, (2, 3)), (0, 0.2, 0.2, (0, 0)), (4, 0.5, 0.0, (2, 0)),
])
def test_split_counts(n, val, test, expected):
    assert split_counts(n, val, test) == expected


def test_bad_fractions_and_duplicates():
    with pytest.raises(ValueError, match="val_fraction must be in"):
        seeded_split(["a"], val_fraction=-0.1)
    with pytest.raises(ValueError, match="at most 1"):
        seeded_split(["a", "b"], val_fraction=0.6, test_fraction=0.6)
    with pytest.raises(ValueError, match=r"duplicate case names \['b'\]"):
        seeded_split(["a", "b", "b"])


def test_split_file_and_nnunet_folds(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps({"train": ["b", "a"], "val": ["c"]}))
    assert load_split_file(path) == {"train": ["b", "a"], "val": ["c"], "test": []}
    assert select_cases(["a", "b", "c"], "train", tmp_path, split_file=path) == ["a", "b"]
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: the 'test' split is empty")):
        select_cases(["a", "b", "c"], "test", tmp_path, split_file=path)
    with pytest.raises(ValueError, match=r"names cases not found .*\['c'\]"):
        select_cases(["a", "b"], "val", tmp_path, split_file=path)

    folds = tmp_path / "splits_final.json"
    folds.write_text(json.dumps([{"train": ["a"], "val": ["b"]}, {"train": ["b"], "val": ["a"]}]))
    assert load_split_file(folds, fold=1)["val"] == ["a"]
    with pytest.raises(ValueError, match="holds 2 folds .*pass fold=0..1"):
        load_split_file(folds)
    with pytest.raises(ValueError, match="fold 5 requested"):
        load_split_file(folds, fold=5)


def test_split_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_split_file(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_split_file(bad)
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"training": ["a"]}))
    with pytest.raises(ValueError, match=r"keys.json: expected .* found \['training'\]"):
        load_split_file(keys)
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({"train": ["a"], "test": ["a"]}))
    with pytest.raises(ValueError, match="case 'a' is listed in both 'train' and 'test'"):
        load_split_file(twice)
    numbers = tmp_path / "numbers.json"
    numbers.write_text(json.dumps({"train": [1, 2]}))
    with pytest.raises(ValueError, match="must be a list of case names"):
        load_split_file(numbers)


def test_empty_seeded_split_names_root_and_split(tmp_path):
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: the 'val' split is empty (1 cases, val_fraction=0.2")):
        select_cases(["only"], "val", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        select_cases(["a"], "validation", tmp_path)


def test_kfold_split_tests_every_case_once_and_carves_val_from_the_rest():
    names = [f"case{i:02d}" for i in range(23)]
    tested: list[str] = []
    for fold in range(5):
        parts = kfold_split(list(reversed(names)), fold, 5, val_fraction=0.25, seed=3)
        assert parts == kfold_split(names, fold, 5, val_fraction=0.25, seed=3)  # order of names is irrelevant
        assert not set(parts["test"]) & (set(parts["train"]) | set(parts["val"]))
        assert not set(parts["train"]) & set(parts["val"])
        assert sorted(parts["train"] + parts["val"] + parts["test"]) == names
        assert len(parts["test"]) in (4, 5) and len(parts["val"]) == int(0.25 * (23 - len(parts["test"])) + 0.5)
        tested += parts["test"]
    assert sorted(tested) == names
    assert kfold_split(names, 0, 5, seed=4)["test"] != kfold_split(names, 0, 5, seed=3)["test"]


def test_kfold_split_errors_and_select_cases(tmp_path):
    names = ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="num_folds must be"):
        kfold_split(names, 0, 1)
    with pytest.raises(ValueError, match="fold must be an integer in 0..3"):
        kfold_split(names, 4, 4)
    with pytest.raises(ValueError, match="5 folds need at least 5 cases"):
        kfold_split(names, 0, 5)
    assert select_cases(names, "test", tmp_path, fold=1, num_folds=4, val_fraction=0.0) == \
        kfold_split(names, 1, 4, val_fraction=0.0)["test"]
    with pytest.raises(ValueError, match="test_fraction must be 0"):
        select_cases(names, "test", tmp_path, fold=1, num_folds=4, test_fraction=0.2)
