"""Stochastic depth: :class:`DropPath`, which drops a residual branch per sample."""

from __future__ import annotations

import torch
import torch.nn as nn


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016; timm's ``DropPath``): (batch, ...) -> same shape.

    In training, each sample's branch output is zeroed with probability p and the kept samples are scaled by
    1 / (1 - p), so the expectation is unchanged; in eval mode (or with p = 0) it is the identity.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path probability must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, ...) -> (batch, ...)."""
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"
