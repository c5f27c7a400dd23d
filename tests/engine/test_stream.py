"""Streaming prediction (medssm.engine.stream): the causal running z-score, and a causal ECG Mamba checkpoint
streamed over MIT-BIH record 100 (skipped without the shared data)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from medssm.engine.checkpoint import save_checkpoint
from medssm.engine.stream import RunningStandardizer, stream_record
from medssm.models import create_model

RECORD = Path(__file__).resolve().parents[3] / "shared" / "data" / "ecg" / "mitdb_wfdb_sample" / "100"
RECORD = RECORD if RECORD.with_suffix(".hea").exists() else Path("/work/shared/data/ecg/mitdb_wfdb_sample/100")


def test_running_standardizer_is_the_causal_z_score_whatever_the_chunks():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(50, 2))
    expected = np.stack([(x[t] - x[:t + 1].mean(0)) / np.maximum(x[:t + 1].std(0), 1e-6) for t in range(50)])
    standardize = RunningStandardizer(2)
    got = np.concatenate([standardize(part) for part in np.split(x, [1, 8, 9, 31])])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _checkpoint(tmp_path: Path, causal: bool) -> Path:
    args = {"spatial_dims": 1, "in_channels": 1, "out_channels": 5, "causal": causal, "stem_channels": [8, 8, 16],
            "depth": 1, "d_state": 4}
    model = create_model("ecg_mamba", **args)
    meta = {"model": "ecg_mamba", "model_args": args, "task": "classification", "num_classes": 5,
            "config": {"data": {"args": {"leads": ["MLII"]}}}}
    save_checkpoint(tmp_path / "ckpt", model, meta)
    return tmp_path / "ckpt"


@pytest.mark.skipif(not RECORD.with_suffix(".hea").exists(), reason="MIT-BIH record 100 not available")
def test_stream_record_writes_one_row_per_window(tmp_path):
    torch.manual_seed(0)
    summary = stream_record(_checkpoint(tmp_path, causal=True), RECORD, tmp_path / "out.csv", window_seconds=0.5,
                            chunk_seconds=0.7, max_seconds=3)
    rows = list(csv.reader((tmp_path / "out.csv").open()))
    window = summary["window_seconds"]
    assert window == pytest.approx(176 / 360)  # 0.5 s = 180 samples, down to a multiple of the stride 8
    assert summary["windows"] == len(rows) - 1 == int(3 / window)
    assert rows[0][:4] == ["window", "start_s", "end_s", "predicted"] and len(rows[0]) == 4 + 5
    assert summary["signal_seconds"] == 3 and summary["real_time_factor"] > 0 and summary["peak_rss_mib"] > 0
    with pytest.raises(ValueError, match="cannot stream"):
        stream_record(_checkpoint(tmp_path / "b", causal=False), RECORD, tmp_path / "b.csv", max_seconds=1)
