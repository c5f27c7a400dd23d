"""Patch embedding, merging (2x downsampling) and expanding (upsampling) for spatial_dims 1, 2 or 3.

All layers take and return channels-first tensors (batch, channels, *spatial), MONAI-style. Any input size
works: sizes that a stride does not divide are zero-padded on the high side. Parameter names follow
VMamba/Swin (``proj``, ``norm``, ``reduction``) and Swin-Unet (``expand``, ``norm``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conventions import check_spatial_dims
from .factories import conv_nd
from .grid import check_grid


def _per_axis(value: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    sizes = (value,) * spatial_dims if isinstance(value, int) else tuple(value)
    if len(sizes) != spatial_dims or any(s < 1 for s in sizes):
        raise ValueError(f"expected a positive int or {spatial_dims} positive ints, got {value!r}")
    return sizes


def pad_to_multiple(x: torch.Tensor, multiple: int | Sequence[int]) -> torch.Tensor:
    """Zero-pad the spatial axes of x (batch, channels, *spatial) on the high side to multiples of
    ``multiple`` (one int, or one per spatial axis). Returns x itself when nothing needs padding."""
    multiples = _per_axis(multiple, x.dim() - 2)
    highs = [-n % m for n, m in zip(x.shape[2:], multiples, strict=True)]
    if not any(highs):
        return x
    return F.pad(x, [p for high in reversed(highs) for p in (0, high)])  # F.pad lists the last axis first


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (batch, in_channels, *spatial) -> (batch, embed_dim, *ceil(spatial
    / patch_size)). A convolution with kernel = stride = patch_size on the input zero-padded to a multiple
    of patch_size, then LayerNorm over channels (VMamba's PatchEmbed2D, in N-d).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        embed_dim: output channels.
        patch_size: patch edge, one int or one per spatial axis.
        norm: apply LayerNorm(embed_dim) after the projection.
    """

    def __init__(self, spatial_dims: int, in_channels: int, embed_dim: int, patch_size: int | Sequence[int],
                 norm: bool = True) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.in_channels = in_channels
        self.patch_size = _per_axis(patch_size, spatial_dims)
        self.proj = conv_nd(spatial_dims, in_channels, embed_dim, kernel_size=self.patch_size,
                            stride=self.patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_grid(x, self.spatial_dims, self.in_channels)
        x = self.proj(pad_to_multiple(x, self.patch_size))
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class PatchMerging(nn.Module):
    """2x downsampling: (batch, dim, *spatial) -> (batch, out_dim, *ceil(spatial / 2)).

    Odd sizes are zero-padded on the high side; the 2^spatial_dims neighbours of each 2x2(x2) block are
    concatenated along channels with the first spatial axis varying fastest (Swin/VMamba's 2D order x[0::2,
    0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]), then LayerNorm and a bias-free Linear.

    Args:
        spatial_dims: 1, 2 or 3.
        dim: input channels.
        out_dim: output channels (default 2 * dim).
    """

    def __init__(self, spatial_dims: int, dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.dim = dim
        self.out_dim = 2 * dim if out_dim is None else out_dim
        self.norm = nn.LayerNorm(2**spatial_dims * dim)
        self.reduction = nn.Linear(2**spatial_dims * dim, self.out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_grid(x, self.spatial_dims, self.dim)
        x = pad_to_multiple(x, 2)
        batch, channels, *sizes = x.shape
        x = x.reshape(batch, channels, *[s for n in sizes for s in (n // 2, 2)])  # (b, c, n0/2, 2, n1/2, 2, ...)
        blocks = [2 + 2 * i for i in range(len(sizes))]
        offsets = [3 + 2 * i for i in reversed(range(len(sizes)))]  # last axis slowest: axis 0 varies fastest
        x = x.permute(0, *blocks, *offsets, 1).flatten(1 + len(sizes))  # (b, *spatial/2, 2^d * c)
        return self.reduction(self.norm(x)).movedim(-1, 1)


class PatchExpanding(nn.Module):
    """Upsampling by ``scale``: (batch, dim, *spatial) -> (batch, out_dim, *(scale * spatial)).

    A bias-free Linear to scale^spatial_dims * out_dim channels, read as (offset along axis 0, ..., offset
    along the last axis, out_dim) and shuffled onto the finer grid (Swin-Unet's PatchExpand, "b h w (p1 p2
    c) -> b (h p1) (w p2) c"), then LayerNorm(out_dim).

    Args:
        spatial_dims: 1, 2 or 3.
        dim: input channels.
        out_dim: output channels (default dim // 2).
        scale: upsampling factor per axis (Swin-Unet's final expand uses 4 with out_dim = dim).
        norm: apply LayerNorm(out_dim) after the shuffle.
    """

    def __init__(self, spatial_dims: int, dim: int, out_dim: int | None = None, scale: int = 2,
                 norm: bool = True) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.dim = dim
        self.out_dim = dim // 2 if out_dim is None else out_dim
        self.scale = scale
        if self.out_dim < 1 or scale < 1:
            raise ValueError(f"out_dim and scale must be positive, got out_dim={self.out_dim}, scale={scale}")
        self.expand = nn.Linear(dim, scale**spatial_dims * self.out_dim, bias=False)
        self.norm = nn.LayerNorm(self.out_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_grid(x, self.spatial_dims, self.dim)
        batch, _, *sizes = x.shape
        d = len(sizes)
        x = self.expand(x.movedim(1, -1)).reshape(batch, *sizes, *[self.scale] * d, self.out_dim)
        interleaved = [a for i in range(d) for a in (1 + i, 1 + d + i)]  # (b, n0, s, n1, s, ..., out_dim)
        x = x.permute(0, *interleaved, 1 + 2 * d).reshape(batch, *[n * self.scale for n in sizes], self.out_dim)
        return self.norm(x).movedim(-1, 1)

