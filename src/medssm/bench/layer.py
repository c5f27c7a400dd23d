"""`medssm bench layer`: a whole Mamba or Mamba2 layer, forward and forward+backward, per op backend.

The scan and the convolution are a Mamba layer's own ops; the projections are torch matmuls either way.
This times the layer with the pure-torch ops ("torch" scan / SSD and F.conv1d) against the numba kernels
("cpu"), so that the kernels' gains are seen where they are used, with every copy and projection around
them. Mamba2's chunked SSD is PyTorch in every configuration; only its convolution changes.
"""

from __future__ import annotations

import torch

from .. import malloc_note
from ..layers import Mamba, Mamba2
from .scan import median_time

# (scan backend, conv backend) per configuration; Mamba2 ignores the scan backend (its SSD is PyTorch)
CONFIGS = (("torch", "torch"), ("cpu", "torch"), ("cpu", "cpu"))


def _layer(kind: str, d_model: int, d_state: int, scan: str, conv: str) -> torch.nn.Module:
    if kind == "mamba":
        return Mamba(d_model, d_state=d_state, scan_backend=scan, conv_backend=conv)
    return Mamba2(d_model, d_state=d_state, headdim=min(64, 2 * d_model), conv_backend=conv)


def bench_layer(kind: str, d_model: int, d_state: int, batch: int, seqlen: int, scan: str, conv: str,
                repeats: int) -> dict:
    """Median forward (no grad) and forward+backward times in ms of one layer on (batch, seqlen, d_model)."""
    torch.manual_seed(0)
    layer = _layer(kind, d_model, d_state, scan, conv)
    x = torch.randn(batch, seqlen, d_model, requires_grad=True)
    grad = torch.randn(batch, seqlen, d_model)

    def forward() -> None:
        with torch.no_grad():
            layer(x)

    def forward_backward() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad)

    return {"layer": kind, "scan": scan if kind == "mamba" else "ssd (torch)", "conv": conv,
            "forward_ms": 1e3 * median_time(forward, repeats),
            "forward_backward_ms": 1e3 * median_time(forward_backward, repeats)}


def run(d_model: int = 96, d_state: int = 16, batch: int = 1, seqlen: int = 4096, repeats: int = 10,
        threads: int | None = None, layers: tuple[str, ...] = ("mamba", "mamba2")) -> list[dict]:
    """Print a Markdown table per layer kind and op configuration, with the speed-up against all-torch."""
    if threads:
        torch.set_num_threads(threads)
    print(f"medssm bench layer: (batch, L, d_model) = ({batch}, {seqlen}, {d_model}), d_state {d_state}, "
          f"{torch.get_num_threads()} threads; {malloc_note()}")
    rows = []
    for kind in layers:
        configs = CONFIGS if kind == "mamba" else tuple((s, c) for s, c in CONFIGS if s == "cpu")
        base = None
        for scan, conv in configs:
            row = bench_layer(kind, d_model, d_state, batch, seqlen, scan, conv, repeats)
            base = base or row
            row["speedup_forward"] = base["forward_ms"] / row["forward_ms"]
            row["speedup_forward_backward"] = base["forward_backward_ms"] / row["forward_backward_ms"]
            rows.append(row)
    print("| layer | scan | conv | fwd ms | fwd+bwd ms | fwd speed-up | fwd+bwd speed-up |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layer']} | {r['scan']} | {r['conv']} | {r['forward_ms']:.2f} | {r['forward_backward_ms']:.2f} | "
              f"{r['speedup_forward']:.2f}x | {r['speedup_forward_backward']:.2f}x |")
    return rows
