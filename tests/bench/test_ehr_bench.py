"""`medssm bench ehr` at tiny lengths: the CLI (a fresh process per case, with memory), the JSON and plot,
the transformer skipped over the memory limit, the slopes."""

from __future__ import annotations

import json

import pytest

from medssm.bench import ehr
from medssm.cli import build_parser, main


def test_cli_parses_and_writes_json_and_plot(tmp_path, capsys):
    args = build_parser().parse_args(["bench", "ehr", "--lengths", "512,1024", "--model", "ehr_mamba",
                                      "--max-memory-gb", "4"])
    assert args.lengths == [512, 1024] and args.model == ["ehr_mamba"] and args.max_memory_gb == 4.0
    out = tmp_path / "bench"
    assert main(["bench", "ehr", "--lengths", "32", "--model", "ehr_mamba", "--d-model", "16", "--depth", "1",
                 "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads((out / "ehr.json").read_text())
    (row,) = report["rows"]
    assert row["skipped"] is None and row["ms"] > 0 and row["params"] > 0 and row["peak_mb"] is not None
    assert (out / "ehr.png").stat().st_size > 1000 and "| ehr_mamba |" in capsys.readouterr().out
    assert main(["bench", "ehr", "--lengths", "32", "--out", str(out)]) == 2  # no --overwrite


def test_transformer_over_the_memory_limit_is_skipped_with_the_longer_lengths(tmp_path):
    report = ehr.run(models=("ehr_mamba", "ehr_transformer"), lengths=(16, 32, 64), d_model=16, depth=1, repeats=1,
                     max_memory_gb=ehr.attention_estimate_gb(20, 1, 4), isolate=False, out_dir=tmp_path)
    rows = {(r["model"], r["length"]): r for r in report["rows"]}
    assert all(rows[("ehr_mamba", n)]["skipped"] is None for n in (16, 32, 64))
    assert rows[("ehr_transformer", 16)]["skipped"] is None
    assert "attention needs" in rows[("ehr_transformer", 32)]["skipped"]
    assert rows[("ehr_transformer", 64)]["skipped"] == "a shorter length was skipped"
    assert report["slopes"]["ehr_mamba"]["time_slope"] is not None
    assert report["slopes"]["ehr_transformer"]["time_slope"] is None  # one length ran
    assert ehr.attention_estimate_gb(32768, 2, 4) > 90


def test_only_event_models():
    with pytest.raises(ValueError, match="event-sequence models"):
        ehr.run(models=("mini_mamba_unet",), lengths=(8,), isolate=False)
