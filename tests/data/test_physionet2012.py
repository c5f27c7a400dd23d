"""PhysioNet 2012 reading: the descriptor rule, -1 and out-of-range values, unknown variables, corrupt files,
labels keyed by RecordID, the splits, and the real files when they are present."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from medssm.data import build_dataset
from medssm.data.ehr import PhysioNet2012, read_outcomes, read_stay_csv, summary_features
from medssm.data.ehr.records import SERIES_INDEX, SERIES_VARIABLES
from medssm.data.ehr.synthetic import write_synthetic_challenge

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "ehr" / "physionet2012"
REAL = REAL if REAL.exists() else Path("/work/shared/data/ehr/physionet2012")

STAY = """Time,Parameter,Value
00:00,RecordID,555
00:00,Age,70
00:00,DiasABP,0
00:00,Gender,1
00:00,Height,-1
00:00,ICUType,9
00:00,Weight,80
00:00,Weight,81.5
00:07,HR,88
00:07,Temp,-17.8
00:07,Frobnicate,3
01:30,Lactate,-1
01:30,pH,7.31
02:00,HR,91
"""


@pytest.fixture(scope="module")
def challenge(tmp_path_factory) -> Path:
    return write_synthetic_challenge(tmp_path_factory.mktemp("p12"), stays=30, events=40)


def test_a_stay_follows_the_stated_rules(tmp_path):
    path = tmp_path / "555.txt"
    path.write_text(STAY)
    counts = Counter()
    stay = read_stay_csv(path, counts)
    assert stay.record_id == "555"
    # the first Weight at 00:00 is the descriptor, the second a series event; ICUType 9 is no ICU type
    assert stay.statics["Age"] == 70 and stay.statics["Gender"] == 1 and stay.statics["Weight"] == 80
    assert math.isnan(stay.statics["Height"]) and math.isnan(stay.statics["ICUType"])
    assert stay.events() == [(0, "Weight", 81.5), (7, "HR", 88.0), (90, "pH", 7.31), (120, "HR", 91.0)]
    assert counts == Counter({"missing": 2, "out_of_range:DiasABP": 1, "out_of_range:Temp": 1,
                              "unknown_variable": 1, "out_of_range:ICUType": 1})


def test_corrupt_and_malformed_files(tmp_path):
    backwards = tmp_path / "1.txt"
    backwards.write_text("Time,Parameter,Value\n00:00,RecordID,1\n02:00,HR,80\n01:00,HR,81\n")
    counts = Counter()
    assert read_stay_csv(backwards, counts) is None and counts["time_out_of_order"] == 1
    for text, message in [("Time,Parameter,Value\n0:7x,HR,80\n", "2: time must be HH:MM"),
                          ("Time,Parameter,Value\n00:07,HR,eighty\n", "value 'eighty' is not a number"),
                          ("Time,Parameter,Value\n00:07,HR\n", "expected Time,Parameter,Value"),
                          ("Time;Parameter;Value\n", "expected the header")]:
        bad = tmp_path / "2.txt"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_stay_csv(bad)


def test_outcomes_are_keyed_by_record_id(tmp_path):
    path = tmp_path / "Outcomes-a.txt"
    path.write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n7,-1,3,9,-1,0\n5,12,1,4,3,1\n")
    outcomes = read_outcomes(path)
    assert outcomes["5"]["In-hospital_death"] == 1 and outcomes["7"]["In-hospital_death"] == 0
    assert math.isnan(outcomes["7"]["SAPS-I"]) and outcomes["5"]["Length_of_stay"] == 4
    path.write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n7,1,3,9,-1,2\n")
    with pytest.raises(ValueError, match="In-hospital_death must be 0 or 1"):
        read_outcomes(path)
    path.write_text("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n7,1,3,9,-1,0\n7,1,3,9,-1,0\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_outcomes(path)


def test_labels_follow_the_record_not_the_row_order(challenge, tmp_path):
    before = PhysioNet2012(challenge, "test", max_length=32)
    shuffled = tmp_path / "p12"
    write_synthetic_challenge(shuffled, stays=30, events=40)
    lines = (shuffled / "Outcomes-b.txt").read_text().splitlines()
    (shuffled / "Outcomes-b.txt").write_text("\n".join([lines[0], *reversed(lines[1:])]) + "\n")
    after = PhysioNet2012(shuffled, "test", max_length=32)
    assert after.cases == before.cases and after.labels.tolist() == before.labels.tolist()
    expected = {r: int(v["In-hospital_death"]) for r, v in read_outcomes(challenge / "Outcomes-b.txt").items()}
    assert [expected[c] for c in after.cases] == after.labels.tolist()
    (shuffled / "Outcomes-b.txt").write_text("\n".join(lines[:-1]) + "\n")  # one stay loses its outcome
    with pytest.raises(ValueError, match="no outcome row for RecordIDs"):
        PhysioNet2012(shuffled, "test", max_length=32)


def test_splits_items_and_the_registry(challenge):
    splits = {s: build_dataset("physionet2012", s, root=str(challenge), max_length=48)
              for s in ("train", "val", "test")}
    assert set(splits["train"].cases).isdisjoint(splits["val"].cases)
    assert len(splits["train"]) + len(splits["val"]) == 30 and len(splits["test"]) == 30
    assert set(splits["test"].cases).isdisjoint(splits["train"].cases)
    item = splits["val"][0]
    assert item["image"].shape == (48, 4) and item["image"].dtype.is_floating_point
    assert item["mask"].dtype == torch.bool and int(item["mask"].sum()) == int((item["image"][:, 0] != 0).sum())
    assert item["name"] == splits["val"].cases[0] and item["targets"].shape == (4,)
    assert int(item["targets"][0]) == int(item["label"])
    assert splits["train"].task == "events" and splits["train"].in_channels == 412
    folds = [PhysioNet2012(challenge, "test", max_length=48, num_folds=3, fold=f).cases for f in range(3)]
    assert sorted(sum(folds, [])) == sorted(splits["train"].cases + splits["val"].cases)
    with pytest.raises(ValueError, match="format must be one of"):
        PhysioNet2012(challenge, "train", format="xml")


def test_summary_features_against_a_hand_count(tmp_path):
    path = tmp_path / "555.txt"
    path.write_text(STAY)
    features, names = summary_features([read_stay_csv(path)])
    row = dict(zip(names, features[0], strict=True))
    assert (row["HR_last"], row["HR_first"], row["HR_min"], row["HR_max"], row["HR_mean"], row["HR_count"]) == \
        (91, 88, 88, 91, 89.5, 2)
    assert row["Lactate_count"] == 0 and math.isnan(row["Lactate_mean"]) and row["Age"] == 70
    assert len(names) == 6 * len(SERIES_VARIABLES) + 5 and SERIES_INDEX["HR"] >= 0


@pytest.mark.skipif(not REAL.exists(), reason="PhysioNet 2012 files not present")
def test_real_files_read_by_the_rules():
    outcomes = read_outcomes(REAL / "Outcomes-b.txt")
    assert len(outcomes) == 4000 and sum(v["In-hospital_death"] for v in outcomes.values()) == 568
    counts = Counter()
    stays = [read_stay_csv(p, counts) for p in sorted((REAL / "set-a").glob("*.txt"))[:40]]
    assert all(s is not None and s.record_id == p.stem for s, p in zip(stays, sorted((REAL / "set-a").glob("*.txt")),
                                                                          strict=False))
    assert counts["missing"] > 0 and counts["time_out_of_order"] == 0 and counts["unknown_variable"] == 0
    assert all(np.all(np.diff(s.minutes) >= 0) and s.minutes.max() <= 48 * 60 for s in stays if len(s))


@pytest.mark.slow
@pytest.mark.skipif(not REAL.exists(), reason="PhysioNet 2012 files not present")
def test_real_splits_hold_every_stay():
    test = PhysioNet2012(REAL, "test", max_length=64)
    assert len(test) == 4000 and int(test.labels.sum()) == 568
    train, val = PhysioNet2012(REAL, "train", max_length=64), PhysioNet2012(REAL, "val", max_length=64)
    assert len(train) + len(val) == 4000 and int(train.labels.sum() + val.labels.sum()) == 554


def test_target_table_is_every_items_targets(challenge):
    data = PhysioNet2012(challenge, "test", max_length=48)
    table = data.target_table()
    items = torch.stack([data[i]["targets"] for i in range(len(data))])
    torch.testing.assert_close(table, items, equal_nan=True)
    assert torch.isnan(table).any() and data.target_names == ("death", "los", "saps", "sofa")  # -1 read as NaN
