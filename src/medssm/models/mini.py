"""Small Mamba networks for the demo and for exercising the training engine.

``MiniMambaUNet``: a convolutional U-Net (MONAI's DynUNet residual blocks) whose deepest encoder stage and
bottleneck use the multi-route Mamba mixer (VSSBlock), where the grid is small enough for global
sequence mixing to be cheap. ``MiniMambaClassifier``: the same encoder, globally pooled, with a linear head.
Both take any input size (padded internally to a multiple of the total stride, cropped back).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import UnetOutBlock, UnetResBlock, UnetUpBlock

from ..layers.grid import check_grid
from ..layers.patch import pad_to_multiple
from ..layers.vss import VSSBlock
from .registry import register_model

NORM = ("instance", {"affine": True})


def _default_route(spatial_dims: int) -> str:
    # 2D: VMamba's four-way cross scan; 3D: SegMamba's three orientations (cheaper than the six-way cross);
    # 1D: forward and backward.
    return {1: "bidirectional", 2: "cross", 3: "tri_oriented"}[spatial_dims]


class MambaEncoder(nn.Module):
    """Strided residual conv stages; the last ``mamba_stages`` stages end with VSSBlocks.

    (batch, in_channels, *spatial) -> list of features, stage s: (batch, features[s], *spatial / 2**s).
    The input must be a multiple of ``2 ** (len(features) - 1)`` along each axis.
    """

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int], mamba_stages: int,
                 mamba_depth: int, route: str | None, d_state: int, scan_backend: str) -> None:
        super().__init__()
        if len(features) < 2:
            raise ValueError(f"features needs at least two stages, got {tuple(features)}")
        if not 0 <= mamba_stages <= len(features):
            raise ValueError(f"mamba_stages must be in 0..{len(features)}, got {mamba_stages}")
        route = route or _default_route(spatial_dims)
        self.stages = nn.ModuleList()
        for s, width in enumerate(features):
            blocks: list[nn.Module] = [UnetResBlock(spatial_dims, in_channels if s == 0 else features[s - 1], width,
                                                    kernel_size=3, stride=1 if s == 0 else 2, norm_name=NORM)]
            if s >= len(features) - mamba_stages:
                blocks += [VSSBlock(spatial_dims, width, d_state=d_state, route=route, mlp_ratio=2.0,
                                    scan_backend=scan_backend) for _ in range(mamba_depth)]
            self.stages.append(nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class MiniMambaUNet(nn.Module):
    """U-Net with Mamba mixers in its deepest stage and bottleneck: (batch, in_channels, *spatial) ->
    logits (batch, out_channels, *spatial), for spatial_dims 1, 2 or 3 and any spatial size.

    Args:
        spatial_dims, in_channels, out_channels: MONAI's meaning.
        features: channels per resolution level; the last is the bottleneck.
        mamba_stages: how many of the deepest levels (bottleneck included) carry VSSBlocks.
        mamba_depth: VSSBlocks per such level. route: scan route (default per spatial_dims).
        d_state: SSM state size. scan_backend: selective_scan backend.
        residual_output: add the input to the output (restoration; needs in_channels == out_channels).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128), mamba_stages: int = 2, mamba_depth: int = 1,
                 route: str | None = None, d_state: int = 16, scan_backend: str = "auto",
                 residual_output: bool = False) -> None:
        super().__init__()
        if residual_output and in_channels != out_channels:
            raise ValueError(f"residual_output needs in_channels == out_channels, got {in_channels} and "
                             f"{out_channels}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.residual_output = residual_output
        self.stride = 2 ** (len(features) - 1)
        self.encoder = MambaEncoder(spatial_dims, in_channels, features, mamba_stages, mamba_depth, route, d_state,
                                    scan_backend)
        self.decoder = nn.ModuleList(
            UnetUpBlock(spatial_dims, features[s + 1], features[s], kernel_size=3, stride=2, upsample_kernel_size=2,
                        norm_name=NORM)
            for s in reversed(range(len(features) - 1)))
        self.head = UnetOutBlock(spatial_dims, features[0], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> (batch, out_channels, *spatial)."""
        check_grid(x, self.spatial_dims, self.in_channels)
        spatial = x.shape[2:]
        skips = self.encoder(pad_to_multiple(x, self.stride))
        y = skips.pop()
        for up in self.decoder:
            y = up(y, skips.pop())
        y = self.head(y)[(..., *(slice(0, n) for n in spatial))]
        return x + y if self.residual_output else y


class MiniMambaClassifier(nn.Module):
    """The Mamba encoder, global average pooling and a linear head: (batch, in_channels, *spatial) ->
    logits (batch, out_channels), for spatial_dims 1, 2 or 3 and any spatial size. Arguments as
    :class:`MiniMambaUNet`; ``dropout`` before the head."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (16, 32, 64, 128), mamba_stages: int = 2, mamba_depth: int = 1,
                 route: str | None = None, d_state: int = 16, scan_backend: str = "auto",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stride = 2 ** (len(features) - 1)
        self.encoder = MambaEncoder(spatial_dims, in_channels, features, mamba_stages, mamba_depth, route, d_state,
                                    scan_backend)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features[-1], out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> (batch, out_channels)."""
        check_grid(x, self.spatial_dims, self.in_channels)
        # Zero padding would dilute the average, so pool only over the positions of the real input.
        padded = pad_to_multiple(x, self.stride)
        features = self.encoder(padded)[-1]
        mask = pad_to_multiple(torch.ones_like(x[:, :1]), self.stride)
        mask = F.interpolate(mask, size=features.shape[2:], mode="area")  # fraction of real input per cell
        pooled = (features * mask).flatten(2).sum(-1) / mask.flatten(2).sum(-1).clamp_min(1e-6)
        return self.head(self.dropout(pooled))


@register_model("segmentation", spatial_dims=(1, 2, 3), input_size={1: (256,), 2: (64, 64), 3: (32, 32, 32)})
def mini_mamba_unet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """Small U-Net, Mamba (VSSBlock) mixers in the deepest stage and bottleneck."""
    return MiniMambaUNet(spatial_dims, in_channels, out_channels, **kwargs)


@register_model("restoration", spatial_dims=(1, 2, 3), input_size={1: (256,), 2: (64, 64), 3: (32, 32, 32)})
def mini_mamba_restorer(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, **kwargs) -> nn.Module:
    """Small Mamba U-Net predicting a residual added to the input (denoising)."""
    return MiniMambaUNet(spatial_dims, in_channels, out_channels, residual_output=True, **kwargs)


@register_model("classification", spatial_dims=(1, 2, 3), input_size={1: (256,), 2: (28, 28), 3: (28, 28, 28)})
def mini_mamba_classifier(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                          **kwargs) -> nn.Module:
    """Small Mamba encoder with global pooling and a linear head."""
    return MiniMambaClassifier(spatial_dims, in_channels, out_channels, **kwargs)
