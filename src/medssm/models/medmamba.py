"""MedMamba (Yue & Li 2024, "MedMamba: Vision Mamba for Medical Image Classification", arXiv:2403.03849):
SS-Conv-SSM blocks in VMamba's hierarchical layout, for spatial_dims 1, 2 or 3.

SS-Conv-SSM block (:class:`SSConvSSM`), x (batch, dim, *spatial)::

    left, right = x.chunk(2, channels)                                 dim / 2 channels each
    left  = conv branch: BN -> conv 3^D -> BN -> ReLU -> conv 3^D -> BN -> ReLU -> conv 1^D -> ReLU
    right = drop_path(SS2D(LayerNorm(right)))                          the multi-route Mamba mixer (cross route)
    y = channel_shuffle(cat(left, right), groups=2)                    interleaves the two halves' channels
    out = y + x

Network (:class:`MedMamba`): PatchEmbed (patch 4 in the paper, LayerNorm), stages of SS-Conv-SSM blocks with
PatchMerging between them, global average pool, linear head (no final norm, as released).
MedMamba-T is ``dims=(96, 192, 384, 768), depths=(2, 2, 4, 2), patch_size=4`` (the small default keeps the
depths (2, 2, 4, 2) at narrower widths and patch 2 for 28x28 inputs).

As released (YubiaoYue/MedMamba, MedMamba.py): the block (parameter names ``ln_1``, ``self_attention``,
``conv33conv33conv11``), the conv branch, the channel shuffle, the residual, SS2D with d_state 16, expand 2
and a 3x3 depthwise conv, drop path on the SSM branch only. Differences: N-d (``route=`` any route of
``medssm.scans``, default "cross": 2, 4, 6 orders in 1D, 2D, 3D); the pool ignores the zero padding that makes
any input size work; default initialisation (the released code re-initialises Linear layers with a truncated
normal); our selective-scan backends instead of the CUDA kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..layers import DropPath, MultiRouteMamba, PatchEmbed, PatchMerging
from ..layers.factories import conv_nd, norm_nd
from ..layers.grid import channels_last, check_grid
from .hierarchical import StagedClassifier, check_stages, drop_path_rates
from .registry import register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle on (batch, C, *spatial): channel g * (C / groups) + j moves to j * groups
    + g, so that consecutive output channels come from different groups."""
    batch, channels = x.shape[:2]
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    return x.reshape(batch, groups, channels // groups, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


class SSConvSSM(nn.Module):
    """MedMamba's SS-Conv-SSM block: (batch, dim, *spatial) -> same shape (see the module docstring).

    Args:
        spatial_dims: 1, 2 or 3. dim: channels (even).
        route, d_state, expand, d_conv: the SSM branch's mixer (:class:`~medssm.layers.MultiRouteMamba`).
        drop_path: stochastic depth of the SSM branch. scan_backend: selective_scan backend.
        ssm: False removes the selective scan from the mixer (the gated-CNN control).
    """

    def __init__(self, spatial_dims: int, dim: int, route: str = "cross", d_state: int = 16, expand: float = 2.0,
                 d_conv: int = 3, drop_path: float = 0.0, scan_backend: str = "auto", ssm: bool = True) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"SS-Conv-SSM splits channels in half: dim must be even, got {dim}")
        half = dim // 2
        self.spatial_dims, self.dim = spatial_dims, dim
        self.ln_1 = nn.LayerNorm(half, eps=1e-6)
        self.self_attention = MultiRouteMamba(spatial_dims, half, d_state=d_state, expand=expand, route=route,
                                              d_conv=d_conv, scan_backend=scan_backend, ssm=ssm)
        self.drop_path = DropPath(drop_path)
        self.conv33conv33conv11 = nn.Sequential(
            norm_nd("batch", spatial_dims, half), conv_nd(spatial_dims, half, half, 3, padding=1),
            norm_nd("batch", spatial_dims, half), nn.ReLU(),
            conv_nd(spatial_dims, half, half, 3, padding=1), norm_nd("batch", spatial_dims, half), nn.ReLU(),
            conv_nd(spatial_dims, half, half, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        check_grid(x, self.spatial_dims, self.dim)
        left, right = x.chunk(2, dim=1)
        right = self.drop_path(self.self_attention(channels_last(self.ln_1, right)))
        return channel_shuffle(torch.cat((self.conv33conv33conv11(left), right), dim=1), 2) + x


class MedMamba(StagedClassifier):
    """MedMamba classifier: (batch, in_channels, *spatial) -> logits (batch, out_channels), spatial_dims 1, 2
    or 3, any spatial size (see the module docstring).

    Args:
        spatial_dims, in_channels, out_channels: MONAI's meaning.
        dims, depths: channels (even) and SS-Conv-SSM blocks per stage (MedMamba-T: (96, 192, 384, 768),
            (2, 2, 4, 2); -S: depths (2, 2, 8, 2); -B: (128, 256, 512, 1024), (2, 2, 12, 2)).
        patch_size: the patch embedding's stride (the paper's 4).
        route, d_state, expand, d_conv: every SSM branch's mixer. drop_path_rate: at the last block (released
            default 0.1). dropout: before the head. scan_backend: selective_scan backend.
        ssm: False removes the selective scan from every mixer.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 dims: Sequence[int] = (16, 32, 64, 96), depths: Sequence[int] = (2, 2, 4, 2), patch_size: int = 2,
                 route: str = "cross", d_state: int = 16, expand: float = 2.0, d_conv: int = 3,
                 drop_path_rate: float = 0.1, dropout: float = 0.0, scan_backend: str = "auto",
                 ssm: bool = True) -> None:
        super().__init__()
        dims, depths = check_stages(dims, depths)
        rates = drop_path_rates(depths, drop_path_rate)
        stages = [nn.Sequential(*(SSConvSSM(spatial_dims, dim, route, d_state, expand, d_conv, p, scan_backend, ssm)
                                  for p in stage_rates)) for dim, stage_rates in zip(dims, rates, strict=True)]
        self.build(spatial_dims, in_channels, out_channels, dims,
                   PatchEmbed(spatial_dims, in_channels, dims[0], patch_size), patch_size, stages,
                   lambda i: PatchMerging(spatial_dims, dims[i], dims[i + 1]), nn.Identity(), dropout=dropout)


@register_model("classification", spatial_dims=(1, 2, 3), input_size={1: (256,), 2: (28, 28), 3: (28, 28, 28)})
def medmamba(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """MedMamba (Yue & Li 2024): SS-Conv-SSM blocks (half conv, half SS2D, channel shuffle), T-variant depths."""
    return MedMamba(spatial_dims, in_channels, out_channels, **kwargs)
