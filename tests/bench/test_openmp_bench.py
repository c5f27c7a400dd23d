"""`medssm bench openmp` runs and reports its three timings."""

from __future__ import annotations

from medssm.bench import openmp
from medssm.cli import main


def test_run_returns_positive_timings(capsys):
    result = openmp.run(shape=(1, 8, 4, 64), repeats=1)
    assert set(result) == {"scan_after_parallel_op_ms", "scan_back_to_back_ms", "dynunet_step_ms"}
    assert all(v > 0 for v in result.values())
    assert "right after a parallel torch op" in capsys.readouterr().out


def test_cli_subcommand_is_wired(capsys):
    assert main(["bench", "openmp", "--repeats", "1"]) == 0
    assert "DynUNet training step" in capsys.readouterr().out
