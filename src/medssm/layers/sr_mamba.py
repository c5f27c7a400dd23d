"""MambaMIL's sequence-reordering Mamba mixer (Yang et al. 2024, "MambaMIL: Enhancing Long Sequence Modeling
with Sequence Reordering in Computational Pathology", MICCAI 2024, arXiv:2403.06800).

One branch scans the bag in its own order; the other scans it reordered with a stride ``rate``: the
instances padded with zeros to a multiple of ``rate`` and regrouped as [0, r, 2r, ..., 1, r+1, ...], so that
instances far apart in the bag order become neighbours. The two branches have their own conv and SSM
parameters and share the input and output projections; their outputs are summed before ``out_proj``.
"""

from __future__ import annotations

import torch

from .bimamba import BiMamba
from .mamba import check_input


def _positions(length: int, rate: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Where each bag position i = k * r + w goes in the reordered sequence, w * K + k (K = ceil(L / r)), as
    an index (length,), and K * r, the reordered length."""
    if not isinstance(rate, int) or rate < 1:
        raise ValueError(f"rate must be a positive integer, got {rate!r}")
    groups = -(-length // rate)
    i = torch.arange(length, device=device)
    return (i % rate) * groups + i // rate, groups * rate


def reorder(x: torch.Tensor, rate: int, dim: int = -1) -> torch.Tensor:
    """x with its sequence axis ``dim`` (length L; default the last, as in (batch, d, L)) zero-padded to a
    multiple of ``rate`` and put in the order [0, r, 2r, ..., 1, r + 1, ...] (position i = k * r + w goes to
    w * K + k, K = ceil(L / r)): one copy, the padding left at zero."""
    dim = dim % x.dim()
    index, padded = _positions(x.shape[dim], rate, x.device)
    shape = (*x.shape[:dim], padded, *x.shape[dim + 1:])
    return x.new_zeros(shape).index_copy_(dim, index, x)


def restore(x: torch.Tensor, rate: int, length: int, dim: int = -1) -> torch.Tensor:
    """The inverse of :func:`reorder`: x in reordered positions along ``dim`` (r * K long) -> the ``length``
    positions in bag order (one copy), the padding dropped."""
    index, padded = _positions(length, rate, x.device)
    if x.shape[dim] != padded:
        raise ValueError(f"restore expects {padded} reordered positions along dim {dim} for length {length} and "
                         f"rate {rate}, got {x.shape[dim]}")
    return x.index_select(dim, index)


class SRMamba(BiMamba):
    """MambaMIL's SR-Mamba mixer (arXiv:2403.06800): (batch, L, d_model) -> (batch, L, d_model).

    Parameters: mamba_ssm's Mamba names for the shared projections and the bag-order branch (``in_proj``,
    ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``) and the released code's names for the
    reordered branch (``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``), as in its fast path::

        x, z = in_proj(t).chunk(2)                                     (batch, d_inner, L) each
        y   = branch(x, z)
        y_r = restore(branch_r(reorder(x, rate), reorder(z, rate)))    both x and the gate z reordered
        out = out_proj(y + y_r)

    The zero padding is scanned by the reordered branch like the released code's (its outputs are dropped).
    ``ssm=False`` removes the selective scan and its parameters from both branches (gated-CNN control).

    Args: those of :class:`~medssm.layers.Mamba`, plus rate (the reordering stride; MambaMIL's default 10).
    """

    def __init__(self, d_model: int, rate: int = 10, **kwargs) -> None:
        super().__init__(d_model, divide_out=False, **kwargs)
        if not isinstance(rate, int) or rate < 1:
            raise ValueError(f"rate must be a positive integer, got {rate!r}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, L, d_model) -> (batch, L, d_model)."""
        check_input(x, self.d_model)
        length = x.shape[1]
        xz = self.in_proj(x)  # (batch, L, 2 * d_inner)
        # Reordered as rows of xz, x and z in one copy that keeps the channels-last layout the conv and scan
        # kernels read in place (reordering (batch, d_inner, L) views cost a pad, a copy and a transpose each).
        u, z = xz.transpose(1, 2).chunk(2, dim=1)
        u_r, z_r = reorder(xz, self.rate, dim=1).transpose(1, 2).chunk(2, dim=1)
        ordered, reordered = self._branch_parameters()
        y = self.scan_branch(u, z, *ordered).transpose(1, 2)  # (batch, L, d_inner)
        y_r = self.scan_branch(u_r, z_r, *reordered).transpose(1, 2)
        return self.out_proj(y + restore(y_r, self.rate, length, dim=1))
