"""WFDBBeats on records written here with wfdb.wrsamp / wfdb.wrann, and on MIT-BIH record 100 when present."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_checks import check_batches

from medssm.data import WFDBBeats

with warnings.catch_warnings():  # wfdb 4.x calls pandas with the deprecated inplace= keyword
    warnings.filterwarnings("ignore", message="The inplace keyword")
    import wfdb

pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword")

MITDB = Path(__file__).resolve().parents[3] / "shared" / "data" / "ecg" / "mitdb_wfdb_sample"
FS = 360
# R peaks and symbols: the first and last beats are too close to the ends for a (90, 170) window;
# "+" (rhythm change) and "~" (noise) are not beats; "B" is a beat AAMI leaves out.
PEAKS = [50, 400, 800, 1200, 1500, 1600, 2000, 2400, 2700, 2850, 2950]
SYMBOLS = ["N", "N", "V", "+", "A", "~", "F", "/", "L", "B", "N"]


def write_record(folder: Path, name: str = "rec1", n: int = 3000, offset: float = 0.0) -> tuple[Path, np.ndarray]:
    t = np.arange(n)
    signal = np.stack([np.sin(t / 37.0) + offset, np.cos(t / 11.0) * 2 + t / n], axis=1)
    wfdb.wrsamp(name, fs=FS, units=["mV", "mV"], sig_name=["MLII", "V5"], p_signal=signal, fmt=["16", "16"],
                write_dir=str(folder))
    wfdb.wrann(name, "atr", np.array(PEAKS), symbol=SYMBOLS, write_dir=str(folder))
    stored = wfdb.rdrecord(str(folder / name)).p_signal  # what the 16-bit format kept
    return folder / name, stored


def test_beat_windows_and_aami_labels(tmp_path):
    record, signal = write_record(tmp_path)
    ds = WFDBBeats([record], "train", val_fraction=0, test_fraction=0, normalize=False)
    assert (ds.task, ds.spatial_dims, ds.in_channels, ds.num_classes) == ("classification", 1, 1, 5)
    # kept: N@400, V@800, A@1500, F@2000, /@2400, L@2700 (B@2850 has no AAMI class; 50 and 2950 fall off)
    assert ds.names == ["rec1:400", "rec1:800", "rec1:1500", "rec1:2000", "rec1:2400", "rec1:2700"]
    assert [ds.class_names[i] for i in ds.labels.tolist()] == ["N", "V", "S", "F", "Q", "N"]
    item = ds[1]
    assert item["image"].shape == (1, 260) and item["label"].dtype == torch.int64
    np.testing.assert_allclose(item["image"][0].numpy(), signal[800 - 90:800 + 170, 0], rtol=1e-6)
    assert ds.class_counts() == {"N": 2, "S": 1, "V": 1, "F": 1, "Q": 1}
    check_batches(ds, batch_size=4)


def test_normal_vs_other_groups_the_aami_classes(tmp_path):
    record, _ = write_record(tmp_path)
    ds = WFDBBeats([record], "train", classes="normal_vs_other", val_fraction=0, test_fraction=0)
    assert ds.class_names == ["normal", "other"] and ds.num_classes == 2
    # N@400 and L@2700 are AAMI N; V, A, F and / are the others; B (no AAMI class) stays out
    assert [ds.class_names[i] for i in ds.labels.tolist()] == ["normal", "other", "other", "other", "other",
                                                               "normal"]


def test_symbols_leads_by_name_and_normalisation(tmp_path):
    record, signal = write_record(tmp_path)
    ds = WFDBBeats([record], leads=("V5", 0), classes="symbols", window=(10, 20), val_fraction=0, test_fraction=0)
    assert ds.class_names == ["/", "A", "B", "F", "L", "N", "V"]
    assert len(ds) == 9 and ds.in_channels == 2  # the window fits all 9 beats now
    window = ds[0]["image"]  # N@50
    expected = signal[40:70, 1]
    np.testing.assert_allclose(window[0].numpy(), (expected - expected.mean()) / expected.std(), atol=1e-4)
    torch.testing.assert_close(window.mean(dim=-1), torch.zeros(2), atol=1e-5, rtol=0)
    chosen = WFDBBeats([record], classes=["V", "A"], window=(10, 20), val_fraction=0, test_fraction=0)
    assert chosen.class_names == ["V", "A"] and chosen.labels.tolist() == [0, 1]


def test_seeded_per_beat_split_and_inter_patient_split(tmp_path):
    first, _ = write_record(tmp_path, "rec1")
    second, _ = write_record(tmp_path, "rec2", offset=1.0)
    kwargs = {"window": (10, 20), "classes": "symbols", "val_fraction": 0.25, "test_fraction": 0.25, "seed": 1}
    parts = {s: WFDBBeats([first, second], s, **kwargs).names for s in ("train", "val", "test")}
    assert sorted(sum(parts.values(), [])) == sorted(WFDBBeats([first, second], window=(10, 20), classes="symbols",
                                                               val_fraction=0, test_fraction=0).names)
    assert len(set(parts["train"]) | set(parts["val"]) | set(parts["test"])) == 18
    assert parts == {s: WFDBBeats([second, first], s, **kwargs).names for s in ("train", "val", "test")}
    assert parts != {s: WFDBBeats([first, second], s, **{**kwargs, "seed": 2}).names for s in ("train", "val", "test")}
    split_records = {"train": [first], "test": [second]}
    test = WFDBBeats(split="test", split_records=split_records, window=(10, 20), val_fraction=0.3)
    train = WFDBBeats(split="train", split_records=split_records, window=(10, 20), val_fraction=0.3)
    val = WFDBBeats(split="val", split_records=split_records, window=(10, 20), val_fraction=0.3)
    assert all(n.startswith("rec2:") for n in test.names)
    assert all(n.startswith("rec1:") for n in train.names + val.names)
    assert not set(train.names) & set(val.names) and len(train) + len(val) == 8


def test_errors_name_the_record(tmp_path):
    record, _ = write_record(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"WFDB record .*nope: header .*nope.hea not found"):
        WFDBBeats([tmp_path / "nope"])
    (tmp_path / "rec1.atr").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotation file .*rec1.atr not found"):
        WFDBBeats([record])
    write_record(tmp_path)
    with pytest.raises(ValueError, match=r"lead index 5 out of range; it has 2 leads \['MLII', 'V5'\]"):
        WFDBBeats([record], leads=(5,))
    with pytest.raises(ValueError, match="no lead named 'V1'"):
        WFDBBeats([record], leads=("V1",))
    with pytest.raises(ValueError, match=r"classes \['X'\] are not WFDB beat symbols"):
        WFDBBeats([record], classes=["X"])
    with pytest.raises(ValueError, match="the 'test' split is empty"):
        WFDBBeats([record], "test", test_fraction=0)
    with pytest.raises(ValueError, match="split_records keys must be among"):
        WFDBBeats(split_records={"training": [record]})
    (tmp_path / "rec1.hea").write_text("garbage\n")
    with pytest.raises(ValueError, match="rec1.hea: cannot read WFDB header"):
        WFDBBeats([record])


@pytest.mark.skipif(not (MITDB / "100.atr").exists(), reason="shared MIT-BIH sample not present")
def test_real_mitdb_record_100_beat_counts():
    # 2,274 annotations: 2,273 beats (N 2239, A 33, V 1) and one rhythm label "+", which is not a beat.
    every = WFDBBeats([MITDB / "100"], classes="symbols", window=(0, 1), val_fraction=0, test_fraction=0)
    assert len(every) == 2273 and every.class_counts() == {"A": 33, "N": 2239, "V": 1}
    aami = {s: WFDBBeats([MITDB / "100"], s, leads=("MLII",)) for s in ("train", "val", "test")}
    total = {name: sum(ds.class_counts()[name] for ds in aami.values()) for name in ("N", "S", "V", "F", "Q")}
    # The (90, 170) window drops the first beat (R peak at sample 77) and the last (9 samples before the end).
    assert total == {"N": 2237, "S": 33, "V": 1, "F": 0, "Q": 0}
    assert [len(aami[s]) for s in ("val", "test")] == [454, 454]
    batch = check_batches(aami["train"], batch_size=8)
    assert batch["image"].shape == (8, 1, 260)
