"""`medssm bench layer` times each layer and op configuration and prints the table."""

from __future__ import annotations

from medssm.bench.layer import bench_layer
from medssm.cli import main


def test_bench_layer_times_forward_and_backward():
    row = bench_layer("mamba", d_model=8, d_state=4, batch=1, seqlen=33, scan="cpu", conv="cpu", repeats=1)
    assert row["forward_ms"] > 0 and row["forward_backward_ms"] > 0 and row["conv"] == "cpu"


def test_cli_prints_every_configuration(capsys):
    assert main(["bench", "layer", "--d-model", "8", "--d-state", "4", "--length", "40", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| mamba | torch | torch |" in out and "| mamba | cpu | cpu |" in out
    assert "| mamba2 | ssd (torch) | torch |" in out and "| mamba2 | ssd (torch) | cpu |" in out
    assert "1.00x" in out  # the all-torch row is the baseline
