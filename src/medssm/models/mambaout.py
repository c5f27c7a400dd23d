"""MambaOut (Yu & Wang 2024, "MambaOut: Do We Really Need Mamba for Vision?", arXiv:2405.07992): Gated CNN
blocks with no state-space model, in a hierarchical 4-stage network, for spatial_dims 1, 2 or 3.

It is the control every Mamba classifier here is read against: the same gated token mixer as a Mamba block
with the selective scan taken out (and nothing else of the SSM left).

Gated CNN block (channels-last inside; hidden = expansion_ratio * dim, conv = conv_ratio * dim)::

    h = fc1(LayerNorm(x))                        (batch, *grid, 2 * hidden)
    g, i, c = split(h, [hidden, hidden - conv, conv])
    c = depthwise k^D conv(c)                    (7x7 in 2D, 7x7x7 in 3D, 7 in 1D)
    x = x + drop_path(fc2(GELU(g) * cat(i, c)))

Network (:class:`MambaOut`): stem (conv 3^D stride s/2 -> LN -> GELU -> conv 3^D stride 2 -> LN, s =
``stem_stride``), stages of ``depths[i]`` blocks at ``dims[i]`` channels, between stages LN -> conv 3^D stride 2,
global average pool, LayerNorm, MLP head (fc1 to 4 * dims[-1], GELU, LayerNorm, dropout, fc2).

As released (yuweihao/MambaOut, models/mambaout.py): the block, the stem, the downsampling and the head,
expansion_ratio 8/3, kernel 7, conv_ratio 1.0 (the conv part has ``conv_ratio * dim`` channels, a fraction of
the hidden channels, as the released code computes it), LayerNorm eps 1e-6; MambaOut-Femto is
``dims=(48, 96, 192, 288), depths=(3, 3, 9, 3), stem_stride=4`` (7.3M parameters at 1000 classes).
Differences: N-d; ``stem_stride`` 2 by default (the released 4 would leave 28x28 MedMNIST images a 7x7 first
grid and a 1x1 last one); the pool ignores the zero padding that makes any input size work; no ImageNet
weights, default PyTorch initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..layers import DropPath
from ..layers.factories import conv_nd
from ..layers.grid import channels_last
from .hierarchical import StagedClassifier, check_stages, drop_path_rates
from .registry import register_model


def _layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6)


class GatedCNNBlock(nn.Module):
    """MambaOut's Gated CNN block on a channels-first grid: (batch, dim, *spatial) -> same shape (see the module
    docstring). Parameter names as released: ``norm``, ``fc1``, ``conv``, ``fc2``.

    Args:
        spatial_dims: 1, 2 or 3. dim: channels. expansion_ratio: hidden / dim.
        kernel_size: the depthwise conv's kernel per axis. conv_ratio: conv channels / dim (at most hidden).
        drop_path: stochastic-depth probability.
    """

    def __init__(self, spatial_dims: int, dim: int, expansion_ratio: float = 8 / 3, kernel_size: int = 7,
                 conv_ratio: float = 1.0, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(expansion_ratio * dim)
        conv_channels = int(conv_ratio * dim)
        if not 0 < conv_channels <= hidden:
            raise ValueError(f"conv_ratio * dim must be in (0, hidden={hidden}], got {conv_channels}")
        self.norm = _layer_norm(dim)
        self.fc1 = nn.Linear(dim, 2 * hidden)
        self.act = nn.GELU()
        self.split_sizes = (hidden, hidden - conv_channels, conv_channels)
        self.conv = conv_nd(spatial_dims, conv_channels, conv_channels, kernel_size, padding=kernel_size // 2,
                            groups=conv_channels)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        h = x.movedim(1, -1)
        g, i, c = self.fc1(self.norm(h)).split(self.split_sizes, dim=-1)
        c = self.conv(c.movedim(-1, 1)).movedim(1, -1)
        y = self.fc2(self.act(g) * torch.cat((i, c), dim=-1))
        return x + self.drop_path(y.movedim(-1, 1))


class _Stem(nn.Module):
    """conv 3^D stride stride/2 -> LN -> GELU -> conv 3^D stride 2 -> LN (MambaOut's StemLayer at stride 4)."""

    def __init__(self, spatial_dims: int, in_channels: int, dim: int, stride: int) -> None:
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"stem_stride must be 2 or 4, got {stride}")
        self.conv1 = conv_nd(spatial_dims, in_channels, dim // 2, 3, stride=stride // 2, padding=1)
        self.norm1 = _layer_norm(dim // 2)
        self.act = nn.GELU()
        self.conv2 = conv_nd(spatial_dims, dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = _layer_norm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(channels_last(self.norm1, self.conv1(x)))
        return channels_last(self.norm2, self.conv2(x))


class _Downsample(nn.Module):
    """LN -> conv 3^D stride 2 (MambaOut's DownsampleLayer)."""

    def __init__(self, spatial_dims: int, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = _layer_norm(dim)
        self.conv = conv_nd(spatial_dims, dim, out_dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(channels_last(self.norm, x))


class MlpHead(nn.Module):
    """fc1 (dim -> mlp_ratio * dim) -> GELU -> LayerNorm -> dropout -> fc2: (batch, dim) -> (batch, classes)."""

    def __init__(self, dim: int, out_channels: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.norm = _layer_norm(hidden)
        self.head_dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.head_dropout(self.norm(self.act(self.fc1(x)))))


class MambaOut(StagedClassifier):
    """MambaOut classifier: (batch, in_channels, *spatial) -> logits (batch, out_channels), spatial_dims 1, 2
    or 3, any spatial size (see the module docstring).

    Args:
        spatial_dims, in_channels, out_channels: MONAI's meaning.
        dims, depths: channels and Gated CNN blocks per stage (MambaOut-Femto: (48, 96, 192, 288), (3, 3, 9, 3)).
        stem_stride: 2 (default, small inputs) or 4 (the paper's).
        expansion_ratio, kernel_size, conv_ratio: the blocks' (see :class:`GatedCNNBlock`).
        drop_path_rate: stochastic depth at the last block (rising linearly from 0). head_dropout: in the head.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 dims: Sequence[int] = (16, 32, 64, 96), depths: Sequence[int] = (2, 2, 4, 2), stem_stride: int = 2,
                 expansion_ratio: float = 8 / 3, kernel_size: int = 7, conv_ratio: float = 1.0,
                 drop_path_rate: float = 0.0, head_dropout: float = 0.0) -> None:
        super().__init__()
        dims, depths = check_stages(dims, depths)
        rates = drop_path_rates(depths, drop_path_rate)
        stages = [nn.Sequential(*(GatedCNNBlock(spatial_dims, dim, expansion_ratio, kernel_size, conv_ratio, p)
                                  for p in stage_rates)) for dim, stage_rates in zip(dims, rates, strict=True)]
        stem = _Stem(spatial_dims, in_channels, dims[0], stem_stride)
        self.build(spatial_dims, in_channels, out_channels, dims, stem, stem_stride, stages,
                   lambda i: _Downsample(spatial_dims, dims[i], dims[i + 1]),
                   _layer_norm(dims[-1]), MlpHead(dims[-1], out_channels, dropout=head_dropout))


@register_model("classification", spatial_dims=(1, 2, 3), input_size={1: (256,), 2: (28, 28), 3: (28, 28, 28)})
def mambaout(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """MambaOut (Yu & Wang 2024): Gated CNN blocks, no SSM: the control for every Mamba classifier."""
    return MambaOut(spatial_dims, in_channels, out_channels, **kwargs)
