"""`medssm bench scan --device cuda`: refused cleanly without a GPU, the table's arithmetic, a tiny run on a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from medssm.bench.scan import Row, op_bytes
from medssm.bench.scan_gpu import GPU_SHAPES, format_gpu_table
from medssm.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_refused_without_a_gpu(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "scan", "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --device cuda needs a CUDA GPU; none found"
    assert not out.exists()


def test_gpu_backends_need_the_gpu_device(capsys):
    assert main(["bench", "scan", "--backend", "triton"]) == 2
    assert "--device cuda" in capsys.readouterr().err


def test_gpu_shapes_include_the_issue_shapes():
    assert (8, 1536, 16, 2048) in GPU_SHAPES and (2, 768, 16, 16384) in GPU_SHAPES


def test_gpu_table_ratios():
    shape = (8, 1536, 16, 2048)
    bandwidth = 2e12  # bytes/s
    bound = op_bytes(shape) / bandwidth
    rows = [Row(shape, "triton", 2 * bound, 5 * bound, 10.0, 20.0),
            Row(shape, "torch", 60 * bound, 200 * bound, 1.0, 2.0),
            Row(shape, "mamba_ssm", 3 * bound, 9 * bound, 5.0, 6.0)]
    table = format_gpu_table(rows, bandwidth)
    line = next(x for x in table.splitlines() if "| triton |" in x)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4] == "2.50"  # (fwd+bwd)/fwd
    assert cells[5] == "30.0x"  # vs torch
    assert cells[6] == "1.50x"  # vs mamba_ssm
    assert cells[7].startswith("2.00 (bound ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_scan_cuda_tiny(tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "scan", "--device", "cuda", "--shape", "1,32,4,256", "--repeats", "2",
                 "--out", str(out)]) == 0
    report = json.loads((out / "scan_cuda.json").read_text())
    assert report["copy_bytes_per_s"] > 0
    assert {"triton", "torch"} <= {r["backend"] for r in report["rows"]}
    assert report["max_abs_diff_vs_torch"]["(1, 32, 4, 256)"]["triton"] < 1e-3
