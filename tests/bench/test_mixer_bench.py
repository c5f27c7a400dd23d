"""`medssm bench mixer` runs and reports the routing share for the 2D and 3D cases."""

from __future__ import annotations

from medssm.bench.mixer import bench_case
from medssm.cli import main


def test_bench_case_reports_consistent_times():
    row = bench_case((9, 7), "cross", d_model=8, d_state=4, batch=1, repeats=2)
    assert row["K"] == 4 and row["tokens"] == 63
    assert 0 < row["routing_ms"] and 0 < row["scan_ms"] and 0 < row["routing_share"]


def test_cli_prints_the_table(capsys):
    assert main(["bench", "mixer", "--d-model", "8", "--d-state", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 64x64 | 4 | 4096 |" in out and "| 32x32x32 | 6 | 32768 |" in out
