"""EHRMamba-style tokens: quantile bins fitted on the training split only, the code layout, truncation to the
most recent events, padding at the end, and the saved tokenizer."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from medssm.data.ehr import EventTokenizer, PhysioNet2012, Stay
from medssm.data.ehr.records import SERIES_INDEX, SERIES_VARIABLES, STATIC_VARIABLES
from medssm.data.ehr.synthetic import write_synthetic_challenge
from medssm.data.ehr.tokens import TOKEN_TYPES


def _stay(record: str, hr: list[float], minutes: list[int] | None = None, age: float = 60.0) -> Stay:
    minutes = minutes or list(range(len(hr)))
    return Stay(record, {"Age": age, "Gender": 1.0, "Height": math.nan, "ICUType": 2.0, "Weight": 70.0},
                np.array(minutes, dtype=np.int64), np.full(len(hr), SERIES_INDEX["HR"], dtype=np.int64),
                np.array(hr, dtype=np.float64))


def test_bins_are_the_training_quantiles():
    rng = np.random.default_rng(0)
    values = rng.normal(90, 15, size=500).round(1)
    stays = [_stay(str(i), values[i * 50:(i + 1) * 50].tolist(), age=40 + i) for i in range(10)]
    tokenizer = EventTokenizer.fit(stays, num_bins=5)
    np.testing.assert_allclose(tokenizer.edges["HR"], np.quantile(values, [0.2, 0.4, 0.6, 0.8]))
    assert tokenizer.edges["Temp"] == [] and tokenizer.scale["Temp"] == (0.0, 1.0)  # never seen: one bin
    assert tokenizer.edges["Age"] == pytest.approx(np.quantile(np.arange(40, 50), [0.2, 0.4, 0.6, 0.8]).tolist())
    codes = tokenizer.series_tokens(stays[0])[:, 0].astype(int)
    expected = tokenizer.series_offset + SERIES_INDEX["HR"] * 5 + np.searchsorted(tokenizer.edges["HR"],
                                                                                  stays[0].values, side="right")
    np.testing.assert_array_equal(codes, expected)
    assert all(tokenizer.token_name(int(c)).startswith("HR:") for c in codes)


def test_layout_truncation_keeps_the_most_recent_events_and_pads_at_the_end():
    stays = [_stay("1", [60.0, 70.0, 80.0, 90.0, 100.0, 110.0], minutes=[0, 30, 60, 90, 120, 150])]
    tokenizer = EventTokenizer.fit(stays, num_bins=3)
    full = tokenizer.encode(stays[0], 16)
    assert full.shape == (16, 4) and full.dtype == np.float32
    # one training value: the edges are [value], and the value itself falls in bin 1
    assert [tokenizer.token_name(int(c)) for c in full[:5, 0]] == ["static:Age:1", "static:Gender:1",
                                                                    "static:Height:missing", "static:ICUType:2",
                                                                    "static:Weight:1"]
    assert (full[:5, 1] == TOKEN_TYPES["static"]).all() and (full[:5, 2] == 0).all()
    assert (full[5:11, 1] == TOKEN_TYPES["bedside"]).all() and (full[11:] == 0).all()
    np.testing.assert_allclose(full[5:11, 2], np.arange(6) * 0.5)  # hours since admission
    short = tokenizer.encode(stays[0], 8)  # the 5 descriptors and the 3 most recent events
    np.testing.assert_array_equal(short[:5], full[:5])
    np.testing.assert_array_equal(short[5:], full[8:11])
    with pytest.raises(ValueError, match="at least the 5 descriptor tokens"):
        tokenizer.encode(stays[0], 4)


def test_vocabulary_size_and_round_trip(tmp_path):
    tokenizer = EventTokenizer.fit([_stay("1", [80.0, 90.0])], num_bins=10)
    assert tokenizer.vocab_size == 1 + 3 * 11 + 3 + 5 + 10 * len(SERIES_VARIABLES) == 412
    tokenizer.save(tmp_path / "t.json")
    again = EventTokenizer.load(tmp_path / "t.json")
    assert again.to_dict() == tokenizer.to_dict() and EventTokenizer.load(tokenizer.to_dict()).vocab_size == 412
    names = {tokenizer.token_name(c) for c in range(tokenizer.vocab_size)}
    assert len(names) == 412 and {f"static:{n}:missing" for n in STATIC_VARIABLES} <= names
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tokenizer.token_name(412)
    with pytest.raises(ValueError, match="not a saved EventTokenizer"):
        EventTokenizer.load({"edges": {}})


def test_bins_come_from_the_train_split_only(tmp_path):
    root = write_synthetic_challenge(tmp_path / "a", stays=24, events=30)
    train, val = PhysioNet2012(root, "train", max_length=40), PhysioNet2012(root, "val", max_length=40)
    assert val.tokenizer.to_dict() == train.tokenizer.to_dict()
    # rewrite every validation and test stay: the bins must not move
    changed = tmp_path / "b"
    shutil.copytree(root, changed)
    for record in val.cases:
        path = changed / "set-a" / f"{record}.txt"
        path.write_text(path.read_text().replace(",HR,", ",Temp,").replace(",Lactate,", ",HR,"))
    shutil.rmtree(changed / "set-b")
    shutil.copytree(changed / "set-a", changed / "set-b")
    shutil.copyfile(changed / "Outcomes-a.txt", changed / "Outcomes-b.txt")
    assert PhysioNet2012(changed, "test", max_length=40).tokenizer.to_dict() == train.tokenizer.to_dict()
    assert PhysioNet2012(changed, "val", max_length=40).tokenizer.to_dict() == train.tokenizer.to_dict()
    # while a change to a training stay does move them
    record = train.cases[0]
    path = changed / "set-a" / f"{record}.txt"
    path.write_text(path.read_text() + "".join(f"47:{m:02d},HR,{250 - m}\n" for m in range(40)))
    assert PhysioNet2012(changed, "val", max_length=40).tokenizer.edges["HR"] != train.tokenizer.edges["HR"]
    # a given tokenizer (e.g. the checkpoint's) is used as is
    given = PhysioNet2012(changed, "val", max_length=40, tokenizer=train.tokenizer.to_dict())
    assert given.tokenizer.to_dict() == train.tokenizer.to_dict()
    # and the test split needs no training files then
    shutil.rmtree(changed / "set-a")
    assert len(PhysioNet2012(changed, "test", max_length=40, tokenizer=train.tokenizer.to_dict())) == 24
