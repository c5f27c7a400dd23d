"""`medssm bench scan` on a tiny shape: the table, the JSON and the plot, and no overwriting."""

from __future__ import annotations

import json

from medssm.bench.scan import format_split, format_table, op_bytes
from medssm.cli import main


def test_bench_scan_writes_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(["bench", "scan", "--shape", "1,8,4,64", "--repeats", "2", "--out", str(out), "--no-compile",
                 "--no-scaling", "--backend", "reference", "--backend", "torch", "--backend", "cpu"])
    assert code == 0
    report = json.loads((out / "scan.json").read_text())
    backends = {r["backend"] for r in report["rows"]}
    assert {"reference", "torch", "cpu"} <= backends
    for row in report["rows"]:
        assert row["forward_s"] > 0 and row["forward_backward_s"] > 0
    limits = report["limits"]
    assert limits["copy_bytes_per_s"] > 0 and limits["torch_exp_per_s"] > 0 and limits["kernel_exp_per_s"] > 0
    assert limits["exp_per_s"] == max(limits["torch_exp_per_s"], limits["kernel_exp_per_s"])
    # measured at the start and after the shape; the bound takes the fastest
    assert len(limits["kernel_exp_samples_per_s"]) == 2
    assert limits["kernel_exp_per_s"] == max(limits["kernel_exp_samples_per_s"])
    assert (out / "scan_vs_length.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "| (1, 8, 4, 64) | cpu |" in printed


def test_bench_scan_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "scan.json").write_text("{}")
    assert main(["bench", "scan", "--shape", "1,8,4,64", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "scan.json").read_text() == "{}"


def test_bench_scan_split(tmp_path):
    out = tmp_path / "bench"
    code = main(["bench", "scan", "--shape", "1,8,4,64", "--repeats", "2", "--out", str(out), "--no-compile",
                 "--no-scaling", "--no-memory", "--backend", "cpu", "--split"])
    assert code == 0
    (line,) = json.loads((out / "scan.json").read_text())["cpu_split"]
    assert line.startswith("cpu split (1, 8, 4, 64): kernels: forward ")
    assert "in sequence" in line and "public calls" in line


def test_split_ratios():
    ms = {"kernel_forward": 1.0, "kernel_forward_cold": 1.5, "kernel_forward_save": 1.25, "kernel_backward": 2.5,
          "kernels_in_sequence": 4.0, "api_forward": 1.25, "api_forward_backward": 5.0}
    line = format_split((1, 2, 3, 4), ms)
    assert "(fwd+bwd)/fwd 3.75 with both hot" in line  # (1.25 + 2.5) / 1
    assert "in sequence 4.00 ms (4.00)" in line
    assert "forward+backward 5.00 (4.00; autograd and Python 1.00 ms)" in line


def test_table_ratios():
    from medssm.bench.scan import Row

    rows = [Row((1, 2, 3, 4), "reference", 1.0, 3.0), Row((1, 2, 3, 4), "cpu", 0.5, 1.0)]
    table = format_table(rows, {"exp_per_s": 24.0, "copy_bytes_per_s": float(op_bytes((1, 2, 3, 4)))})
    cpu_line = next(line for line in table.splitlines() if "| cpu |" in line)
    assert "| 2.0x |" in cpu_line  # against the reference
    assert "| 2.00 |" in cpu_line  # (fwd + bwd) / fwd
    assert "0.50 (bound 1000.00 ms)" in cpu_line  # bound = max(24 exps / 24 per s, bytes / bandwidth) = 1 s


def test_info(capsys):
    assert main(["info"]) == 0
    assert "selective_scan backends on cpu" in capsys.readouterr().out
