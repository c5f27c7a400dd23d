"""`medssm bench mil` on tiny bags: every variant measured, the skip rules, the table and the files."""

from __future__ import annotations

import json

from medssm.bench import mil
from medssm.bench.scan import memory_supported
from medssm.cli import main


def test_every_variant_runs_on_tiny_bags(tmp_path):
    report = mil.run(sizes=[8, 16], repeats=1, threads=1, out_dir=tmp_path, isolate=False)
    rows = report["rows"]
    assert [(r["variant"], r["n"]) for r in rows] == [(v, n) for v in mil.VARIANTS for n in (8, 16)]
    assert "mamba_mil_ckpt" in mil.VARIANTS
    assert all(r["skipped"] is None and r["ms"] > 0 and r["params"] > 0 for r in rows)
    assert "| mamba_mil_nossm |" in report["table"] and (tmp_path / "mil.png").stat().st_size > 0
    assert json.loads((tmp_path / "mil.json").read_text())["settings"]["features"] == 512


def test_sizes_past_the_time_limit_or_after_an_out_of_memory_are_skipped():
    ran = mil.Row("transmil_exact", 1000, params=1, ms=2000.0)
    assert mil._skip_reason("transmil_exact", 10_000, ran, 120)[0].startswith("predicted 200 s per call (quadratic")
    assert mil._skip_reason("mamba_mil", 10_000, mil.Row("mamba_mil", 1000, ms=2000.0), 120) is None  # 20 s
    oom = mil.Row("transmil", 10_000, skipped="out of memory", skip_kind="memory")
    assert mil._skip_reason("transmil", 100_000, oom, 120) == ("n=10000 was skipped: out of memory", "memory")
    big = mil.Row("mamba_mil", 10_000, ms=10_000.0, peak_mb=1210.0)  # measured at 10k on the 24 GB VM
    reason, kind = mil._skip_reason("mamba_mil", 100_000, big, 600, memory_mb=12_000)
    assert kind == "memory" and reason.startswith("predicted peak 11.8 GB (linear from n=10000) > 80% of the 11.7 GB")
    assert mil._skip_reason("mamba_mil", 100_000, big, 600, memory_mb=100_000) is None
    # the resident memory of the timed calls (glibc's heap keeping freed blocks) counts when it is the larger
    heap = mil.Row("mamba_mil", 20_000, ms=10_000.0, peak_mb=2418.0, resident_mb=5210.0)
    reason, kind = mil._skip_reason("mamba_mil", 100_000, heap, 600, memory_mb=24_000)
    assert kind == "memory" and reason.startswith("predicted peak 25.4 GB (linear from n=20000)")
    assert mil._skip_reason("mamba_mil", 100_000, mil.Row("mamba_mil", 20_000, ms=1.0, peak_mb=2418.0),
                            600, memory_mb=24_000) is None


def test_the_command_measures_in_a_fresh_process(tmp_path, capsys):
    assert main(["bench", "mil", "--model", "abmil", "--sizes", "8", "--repeats", "1", "--threads", "1", "--out",
                 str(tmp_path / "b")]) == 0
    rows = json.loads((tmp_path / "b" / "mil.json").read_text())["rows"]
    assert len(rows) == 1 and rows[0]["skipped"] is None and rows[0]["ms"] > 0
    if memory_supported():
        assert rows[0]["peak_mb"] is not None and rows[0]["resident_mb"] is not None
    assert "| abmil |" in capsys.readouterr().out
