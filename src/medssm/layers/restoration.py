"""Blocks of the residual-group image restorers (MambaIR, MaIR), in N-d (spatial_dims 1, 2 or 3).

==============================  ============================================================================
block                           what it computes (x channels-first (batch, dim, *spatial))
==============================  ============================================================================
ChannelAttention (RCAN)         x * sigmoid(conv1x1(relu(conv1x1(avgpool(x)))))
CAB (MambaIR)                   conv3 -> GELU -> conv3 -> ChannelAttention
SequenceShuffleAttention (MaIR)  K route grids -> sum_k grid_k * sigmoid(per-channel K x K mix of their means)
ScaledResidualBlock             x = s1 * x + dp(op(LN(x)));  x = s2 * x + ffn(LN(x))   (s1, s2 per channel)
ResidualGroup                   x + conv3(blocks(x))
ResidualGroupRestorer           x + conv_last(conv_after_body(norm(groups(LN(conv_first(x))))) + conv_first(x))
==============================  ============================================================================

Parameter names follow MambaIR's released code (Guo et al. 2024, arXiv:2402.15648, ``mambair_arch.py``):
``conv_first``, ``patch_embed.norm``, ``layers.<g>.residual_group.blocks.<b>.{ln_1, self_attention, skip_scale,
ln_2, conv_blk, skip_scale2}``, ``layers.<g>.conv``, ``norm``, ``conv_after_body``, ``conv_last``; the CAB's
``cab.0`` / ``cab.2`` convs and ``cab.3.attention.1`` / ``.3`` 1x1 convs. Differences from the released code:
everything is channels-first (no token reshapes, which changes no arithmetic), any spatial_dims, and no mean
subtraction / ``img_range`` scaling (a grey input has mean 0 and range 1 there).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..conventions import check_spatial_dims
from .drop import DropPath
from .factories import conv_nd, pool_nd
from .grid import channels_last, check_grid


def check_same_channels(in_channels: int, out_channels: int) -> None:
    """A restoration network outputs its input's channels: ValueError unless out_channels == in_channels."""
    if out_channels != in_channels:
        raise ValueError(f"a restoration model outputs its input's channels: out_channels must equal "
                         f"in_channels={in_channels}, got {out_channels}")


def check_depths(depths: Sequence[int], embed_dim: int) -> tuple[int, ...]:
    """depths as a tuple of positive ints (blocks per group); ValueError naming the argument otherwise."""
    depths = tuple(depths)
    if not depths or not all(isinstance(d, int) and d >= 1 for d in depths):
        raise ValueError(f"depths must be a non-empty list of positive ints (blocks per group), got {depths}")
    if embed_dim < 1:
        raise ValueError(f"embed_dim must be positive, got {embed_dim}")
    return depths


def drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> list[float]:
    """Stochastic-depth rate of every block, rising linearly from 0 to drop_path_rate (MambaIR's rule)."""
    total = sum(depths)
    return [drop_path_rate * i / max(total - 1, 1) for i in range(total)]


class ChannelAttention(nn.Module):
    """RCAN's channel attention (Zhang et al. 2018, "Image Super-Resolution Using Very Deep Residual Channel
    Attention Networks", arXiv:1807.02758): (batch, dim, *spatial) -> same shape, each channel scaled by a
    gate computed from the global means of all channels (squeezed to ``max(1, dim // squeeze_factor)``)."""

    def __init__(self, spatial_dims: int, dim: int, squeeze_factor: int = 16) -> None:
        super().__init__()
        hidden = max(1, dim // squeeze_factor)
        self.attention = nn.Sequential(pool_nd("adaptive_avg", spatial_dims, 1), conv_nd(spatial_dims, dim, hidden, 1),
                                       nn.ReLU(inplace=True), conv_nd(spatial_dims, hidden, dim, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        return x * self.attention(x)


class CAB(nn.Module):
    """MambaIR's channel-attention block: conv3 (dim -> dim // compress_ratio) -> GELU -> conv3 (back to dim)
    -> :class:`ChannelAttention` (squeeze ``squeeze_factor``, 30 in MambaIR): (batch, dim, *spatial) -> same.
    MambaIR's light-SR variant (1x1 and dilated depthwise convs) is not built here."""

    def __init__(self, spatial_dims: int, dim: int, compress_ratio: int = 3, squeeze_factor: int = 30) -> None:
        super().__init__()
        hidden = max(1, dim // compress_ratio)
        self.cab = nn.Sequential(conv_nd(spatial_dims, dim, hidden, 3, padding=1), nn.GELU(),
                                 conv_nd(spatial_dims, hidden, dim, 3, padding=1),
                                 ChannelAttention(spatial_dims, dim, squeeze_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        return self.cab(x)


class SequenceShuffleAttention(nn.Module):
    """MaIR's sequence shuffle attention (Li et al. 2025, arXiv:2412.20066, ``ShuffleAttn``): merges the K
    route outputs of a multi-route mixer, (batch, K, channels, *spatial) -> (batch, channels, *spatial).

    Each route grid is averaged over space; the (K, channels) means are channel-shuffled so that the K
    routes of channel c sit together (index c * K + k), mixed by a grouped 1x1 conv (groups = channels: a
    K x K linear map with bias per channel), passed through a sigmoid and shuffled back: a weight per
    (route, channel). The output is the weighted sum of the route grids. ``gating`` is MaIR's
    ``gating.gating.1`` conv (its (C*K, K, 1, 1) weight is this (C*K, K, 1) one).
    """

    def __init__(self, channels: int, num_routes: int) -> None:
        super().__init__()
        if num_routes < 2:
            raise ValueError(f"sequence shuffle attention merges several routes, got num_routes={num_routes}")
        self.channels, self.num_routes = channels, num_routes
        self.gating = nn.Conv1d(channels * num_routes, channels * num_routes, 1, groups=channels)

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        """grids: (batch, K, channels, *spatial) -> (batch, channels, *spatial)."""
        batch, routes, channels = grids.shape[:3]
        if (routes, channels) != (self.num_routes, self.channels) or grids.dim() < 4:
            raise ValueError(f"grids must be (batch, {self.num_routes}, {self.channels}, *spatial), "
                             f"got {tuple(grids.shape)}")
        means = grids.flatten(3).mean(-1)  # (batch, K, channels)
        shuffled = means.transpose(1, 2).reshape(batch, channels * routes, 1)
        weights = torch.sigmoid(self.gating(shuffled)).view(batch, channels, routes).transpose(1, 2)
        return (grids * weights.reshape(batch, routes, channels, *[1] * (grids.dim() - 3))).sum(1)


class ScaledResidualBlock(nn.Module):
    """MambaIR's residual state-space block (RSSB) and MaIR's residual Mamba block (RMB) skeleton:
    (batch, dim, *spatial) -> same shape.

    ``x = skip_scale * x + drop_path(self_attention(ln_1(x)))``, then ``x = skip_scale2 * x +
    conv_blk(ln_2(x))``: learnable per-channel scales (initialised to 1) on the skips, LayerNorms on the
    channel axis. ``self_attention`` is the token mixer (MambaIR and MaIR: a multi-route Mamba mixer);
    ``conv_blk`` the local branch (MambaIR: :class:`CAB`; MaIR: an MLP), both channels-first modules.
    """

    def __init__(self, spatial_dims: int, dim: int, op: nn.Module, ffn: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.spatial_dims, self.dim = check_spatial_dims(spatial_dims), dim
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = op
        self.drop_path = DropPath(drop_path)
        self.skip_scale = nn.Parameter(torch.ones(dim))
        self.conv_blk = ffn
        self.ln_2 = nn.LayerNorm(dim)
        self.skip_scale2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        check_grid(x, self.spatial_dims, self.dim)
        shape = (1, self.dim) + (1,) * self.spatial_dims
        x = x * self.skip_scale.view(shape) + self.drop_path(self.self_attention(channels_last(self.ln_1, x)))
        return x * self.skip_scale2.view(shape) + self.conv_blk(channels_last(self.ln_2, x))


class ResidualGroup(nn.Module):
    """A residual group (MambaIR's RSSG, MaIR's RMG): ``x + conv(blocks(x))`` with a 3x3(x3) conv:
    (batch, dim, *spatial) -> same shape. The blocks are ``residual_group.blocks``."""

    def __init__(self, spatial_dims: int, dim: int, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(blocks)
        self.conv = conv_nd(spatial_dims, dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        y = x
        for block in self.residual_group.blocks:
            y = block(y)
        return x + self.conv(y)


class ResidualGroupRestorer(nn.Module):
    """The MambaIR / MaIR denoising network around a list of residual groups: (batch, in_channels, *spatial)
    -> (batch, in_channels, *spatial), the restored image, for any spatial size (no down-sampling).

    Shallow features ``f0 = conv_first(x)`` (3x3(x3) conv to ``embed_dim``); deep features
    ``norm(groups(patch_embed.norm(f0)))``; ``conv_after_body`` of them plus f0 (the long skip); then
    ``x + conv_last(...)``: the network predicts the residual added to its input (the global residual).
    Linear layers are initialised as in the released code (truncated normal, std 0.02, zero bias).
    """

    def __init__(self, spatial_dims: int, in_channels: int, embed_dim: int, groups: Sequence[nn.Module]) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels = check_spatial_dims(spatial_dims), in_channels
        self.conv_first = conv_nd(spatial_dims, in_channels, embed_dim, 3, padding=1)
        self.patch_embed = nn.Module()
        self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.layers = nn.ModuleList(groups)
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = conv_nd(spatial_dims, embed_dim, embed_dim, 3, padding=1)
        self.conv_last = conv_nd(spatial_dims, embed_dim, in_channels, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> (batch, in_channels, *spatial)."""
        check_grid(x, self.spatial_dims, self.in_channels)
        first = self.conv_first(x)
        y = channels_last(self.patch_embed.norm, first)
        for layer in self.layers:
            y = layer(y)
        y = self.conv_after_body(channels_last(self.norm, y)) + first
        return x + self.conv_last(y)
