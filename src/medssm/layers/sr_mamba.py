"""MambaMIL's sequence-reordering Mamba mixer (Yang et al. 2024, "MambaMIL: Enhancing Long Sequence Modeling
with Sequence Reordering in Computational Pathology", MICCAI 2024, arXiv:2403.06800).

One branch scans the bag in its own order; the other scans it reordered with a stride ``rate``: the
instances padded with zeros to a multiple of ``rate`` and regrouped as [0, r, 2r, ..., 1, r+1, ...], so that
instances far apart in the bag order become neighbours. The two branches have their own conv and SSM
parameters and share the input and output projections; their outputs are summed before ``out_proj``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bimamba import BiMamba
from .mamba import check_input


def reorder(x: torch.Tensor, rate: int) -> torch.Tensor:
    """(batch, d, L) -> (batch, d, r * ceil(L / r)): zero-padded to a multiple of ``rate``, then the positions
    [0, r, 2r, ..., 1, r + 1, ...] (position i = k * r + w goes to w * K + k, K = ceil(L / r))."""
    if rate < 1:
        raise ValueError(f"rate must be a positive integer, got {rate}")
    length = x.shape[-1]
    groups = -(-length // rate)
    x = F.pad(x, (0, groups * rate - length))
    return x.unflatten(-1, (groups, rate)).transpose(-1, -2).flatten(-2)


def restore(x: torch.Tensor, rate: int, length: int) -> torch.Tensor:
    """The inverse of :func:`reorder`: (batch, d, r * K) in reordered positions -> (batch, d, length) in bag
    order, the padding dropped."""
    groups = x.shape[-1] // rate
    return x.unflatten(-1, (rate, groups)).transpose(-1, -2).flatten(-2)[..., :length]


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
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        ordered, reordered = self._branch_parameters()
        y = self.scan_branch(u, z, *ordered)
        y_r = self.scan_branch(reorder(u, self.rate), reorder(z, self.rate), *reordered)
        return self.out_proj((y + restore(y_r, self.rate, length)).transpose(1, 2))
