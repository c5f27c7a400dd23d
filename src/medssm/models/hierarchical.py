"""The skeleton the hierarchical classifiers share (VMamba, MedMamba, MambaOut): a stem, stages of blocks with
a downsampling layer between consecutive stages, a global average pool over the real (unpadded) input, an
optional norm and a linear head.

(batch, in_channels, *spatial) -> logits (batch, out_channels). The input is zero-padded on the high side to
a multiple of the total stride (so every downsampling sees even sizes) and the pool weighs each position of
the last grid by the fraction of real input under it, so padding does not dilute the average.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conventions import check_spatial_dims
from ..layers.grid import check_grid
from ..layers.patch import pad_to_multiple


def check_stages(dims: Sequence[int], depths: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``dims`` and ``depths`` as tuples with one positive entry per stage (ValueError naming them if not)."""
    dims, depths = tuple(dims), tuple(depths)
    if not dims or len(dims) != len(depths) or min(dims) < 1 or min(depths) < 1:
        raise ValueError(f"dims and depths need one positive entry per stage, got dims={dims}, depths={depths}")
    return dims, depths


def drop_path_rates(depths: Sequence[int], rate: float) -> list[list[float]]:
    """Stochastic depth rising linearly from 0 to ``rate`` over all blocks, split per stage (Swin's rule)."""
    rates = torch.linspace(0, rate, sum(depths)).tolist()
    starts = [sum(depths[:i]) for i in range(len(depths))]
    return [rates[s:s + d] for s, d in zip(starts, depths, strict=True)]


def masked_global_mean(features: torch.Tensor, x: torch.Tensor, stride: int) -> torch.Tensor:
    """Mean of ``features`` (batch, C, *grid) over the positions of the real input x (batch, C_in, *spatial),
    padded by ``pad_to_multiple(x, stride)`` before the network: (batch, C)."""
    mask = pad_to_multiple(torch.ones_like(x[:, :1]), stride)
    mask = F.interpolate(mask, size=features.shape[2:], mode="area")  # fraction of real input per cell
    return (features * mask).flatten(2).sum(-1) / mask.flatten(2).sum(-1).clamp_min(1e-6)


class StagedClassifier(nn.Module):
    """Stem -> stage 0 -> downsample -> stage 1 -> ... -> masked global mean -> norm -> dropout -> head.

    Subclasses build the parts and call :meth:`build`. ``stem`` maps (batch, in_channels, *spatial) to
    (batch, dims[0], *spatial / stem_stride); ``downsample(i)`` maps stage i's (batch, dims[i], *grid) to
    (batch, dims[i + 1], *grid / 2); ``head_norm`` acts on the pooled (batch, dims[-1]) features.
    """

    def build(self, spatial_dims: int, in_channels: int, out_channels: int, dims: Sequence[int], stem: nn.Module,
              stem_stride: int, stages: Sequence[nn.Module], downsample: Callable[[int], nn.Module],
              head_norm: nn.Module, head: nn.Module | None = None, dropout: float = 0.0) -> None:
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.in_channels = in_channels
        self.stride = stem_stride * 2 ** (len(dims) - 1)
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.downsamples = nn.ModuleList(downsample(i) for i in range(len(dims) - 1))
        self.head_norm = head_norm
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dims[-1], out_channels) if head is None else head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> pooled features (batch, dims[-1])."""
        check_grid(x, self.spatial_dims, self.in_channels)
        y = self.stem(pad_to_multiple(x, self.stride))
        for i, stage in enumerate(self.stages):
            y = stage(y if i == 0 else self.downsamples[i - 1](y))
        return self.head_norm(masked_global_mean(y, x, self.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> logits (batch, out_channels)."""
        return self.head(self.dropout(self.forward_features(x)))
