"""Inputs for the selective-scan tests: a frozen ``Case`` describes one call, ``make_inputs`` builds it.

Imported by the test modules next to it (pytest puts this folder on ``sys.path``, as it has no
``__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass(frozen=True)
class Case:
    """One selective_scan call. The defaults are one configuration of mamba_ssm's own test grid."""

    batch: int = 2
    dim: int = 4
    d_state: int = 8
    seqlen: int = 128
    b_mode: str = "selective"  # "fixed" (d, N), "selective" (batch, N, L) or "grouped" (batch, G, N, L)
    c_mode: str = "selective"
    groups: int = 1  # G of the grouped modes
    has_D: bool = True
    has_z: bool = True
    has_delta_bias: bool = True
    delta_softplus: bool = True
    return_last_state: bool = True
    itype: torch.dtype = torch.float32  # dtype of u, delta, z and of selective/grouped B and C
    a_init: str = "rand"  # "rand": A = -0.5 * rand (mamba_ssm's test); "s4d": A = -(1..N) (Mamba's init)
    delta_scale: float = 0.5  # delta = delta_scale * rand
    noncontiguous: bool = False  # u, delta, z and C transposed from (..., L, x) tensors; B sliced with a step

    @property
    def id(self) -> str:
        """Short test id: the fields that differ from the defaults."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                   if getattr(self, f.name) != f.default]
        return "-".join(changed).replace("torch.", "") or "default"


def make_inputs(case: Case, seed: int = 0, device: str | torch.device = "cpu"):
    """Random inputs for ``case``, the same for the same seed.

    Returns ``(kwargs, leaves)``: ``kwargs`` for ``selective_scan(**kwargs)`` (tensors possibly non-contiguous
    views), and ``leaves``: argument name -> the leaf tensor that receives the gradient (the tensor a
    non-contiguous view was made from, so compare the gradients of leaves made with the same case).
    """
    gen = torch.Generator().manual_seed(seed)
    batch, dim, n, seqlen = case.batch, case.dim, case.d_state, case.seqlen
    leaves = {}

    def draw(name, shape, dtype=torch.float32, scale=1.0, uniform=False, layout="contiguous"):
        """A leaf with values scale * randn (or rand), and the argument made from it in ``layout``."""
        if layout == "transposed":  # stored with the last two dimensions swapped
            stored = (*shape[:-2], shape[-1], shape[-2])
        elif layout == "strided":  # every other element of a tensor twice as long
            stored = (*shape[:-1], 2 * shape[-1])
        else:
            stored = shape
        values = torch.rand(stored, generator=gen) if uniform else torch.randn(stored, generator=gen)
        leaf = (scale * values).to(device=device, dtype=dtype).requires_grad_()
        leaves[name] = leaf
        if layout == "transposed":
            return leaf.transpose(-1, -2)
        if layout == "strided":
            return leaf[..., ::2]
        return leaf

    def coefficients(name, mode, layout):
        if mode == "fixed":
            return draw(name, (dim, n), layout=layout)
        shape = (batch, n, seqlen) if mode == "selective" else (batch, case.groups, n, seqlen)
        return draw(name, shape, dtype=case.itype, layout=layout)

    sequence_layout = "transposed" if case.noncontiguous else "contiguous"
    kwargs = {
        "u": draw("u", (batch, dim, seqlen), dtype=case.itype, layout=sequence_layout),
        "delta": draw("delta", (batch, dim, seqlen), dtype=case.itype, scale=case.delta_scale, uniform=True,
                      layout=sequence_layout),
    }
    if case.a_init == "rand":
        kwargs["A"] = draw("A", (dim, n), scale=-0.5, uniform=True)
    else:
        s4d = -torch.arange(1, n + 1, dtype=torch.float32).repeat(dim, 1)
        kwargs["A"] = leaves["A"] = s4d.to(device).requires_grad_()
    kwargs["B"] = coefficients("B", case.b_mode, "strided" if case.noncontiguous else "contiguous")
    kwargs["C"] = coefficients("C", case.c_mode, sequence_layout)
    kwargs["D"] = draw("D", (dim,)) if case.has_D else None
    kwargs["z"] = None
    if case.has_z:
        kwargs["z"] = draw("z", (batch, dim, seqlen), dtype=case.itype, layout=sequence_layout)
    kwargs["delta_bias"] = None
    if case.has_delta_bias:
        kwargs["delta_bias"] = draw("delta_bias", (dim,), scale=0.5, uniform=True)
    kwargs["delta_softplus"] = case.delta_softplus
    kwargs["return_last_state"] = case.return_last_state
    return kwargs, leaves
