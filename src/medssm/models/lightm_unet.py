"""LightM-UNet (Liao, Zhu, Li, Zhou & Wu 2024, "LightM-UNet: Mamba Assists in Lightweight UNet for Medical
Image Segmentation", arXiv:2403.05246), for spatial_dims 2 and 3.

Structure, for an input (B, in_channels, *S) with widths c_i = init_filters * 2**i (32, 64, 128, 256) and
blocks_down (1, 2, 2, 4), blocks_up (1, 1, 1)::

    pad S to a multiple of 2**(len(blocks_down) - 1) (8)
    stem      depthwise-separable conv: depthwise 3^d on in_channels, pointwise -> c_0      (B, c_0, S)
    encoder   stage 0: blocks_down[0] x ResMambaBlock(c_0)                                (B, c_0, S)
              stage i > 0: RVM(c_{i-1} -> c_i) + max-pool 2, blocks_down[i] x ResMambaBlock(c_i)
                                                                                     (B, c_i, S / 2**i)
    decoder   per level, deepest first: 1x1 conv c_{i+1} -> c_i, (bi/tri)linear upsampling x2,
              + the encoder's stage-i output, blocks_up x ResUpBlock(c_i)                (B, c_i, S / 2**i)
    head      GroupNorm, ReLU, depthwise-separable 1x1 conv (with biases) -> out_channels
    crop back to S                                                               (B, out_channels, S)

ResMambaBlock(c) (the released one): ``x + RVM(ReLU(GN(RVM(ReLU(GN(x))))))``. ResUpBlock(c):
``ReLU(GN(dwsep_conv3(ReLU(GN(x))) + s * x))`` with a learnable scalar s. RVM, the residual vision Mamba
layer (:class:`~medssm.layers.ResidualVisionMamba`): ``proj(LN(mamba(LN(t)) + s * t))`` over the tokens t.
GroupNorm has 8 groups throughout.

Scan route: the released RVM flattens in raster order (the default, ``route="raster"``). Any other route
of ``medssm.scans`` runs each RVM's Mamba (the same weights) over the route's K orderings and averages the K
outputs on the grid (:func:`~medssm.layers.token_routes.mix_along_route`): parameters are unchanged, only the
scan order differs; raster gives exactly the released layer.

Parameter count. The paper reports 1.09M parameters for its 2D network (as quoted in LightM-UNet#30) and
the README "1M", but the released code with the released configuration (init_filters 32, blocks
(1, 2, 2, 4) / (1, 1, 1)) has 5,011,683 in 2D (5,015,733 in 3D), which users reproduce (LightM-UNet#30:
5.01M): its 21 Mamba mixers hold 4,277,440 of them, 8 at width 256; everything outside the mixers is 0.73M.
This module builds the released architecture, so it has the released count, not the paper's;
``tests/models/test_lightm_unet.py`` derives that count part by part, asserts it and prints the claim.

Differences from the released code (github.com/MrBlankness/LightM-UNet, nnunetv2/nets/LightMUNet.py):
module names are snake_case (``conv_init`` for ``convInit``; RVM layers ``rvm1``/``rvm2`` for
``conv1``/``conv2``); plain torch convs instead of MONAI's ``Convolution`` wrappers (no ``.conv`` in keys);
ReLU is not in-place; the released defaults are fixed (ReLU, GroupNorm, non-trainable upsampling, the final
head always built: no ``act``/``norm``/``upsample_mode``/``use_conv_final`` options); fp16 inputs are not
cast to fp32 inside the RVM layers (the mixer handles precision); any input size (padding and cropping);
``route=``, ``ssm=`` and ``scan_backend=``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..conventions import check_spatial_dims
from ..layers import ResidualVisionMamba, conv_nd, dropout_nd, pad_to_multiple, pool_nd
from ..layers.grid import channels_last, check_grid
from ..layers.token_routes import build_route, mix_along_route
from ..scans import ScanRoute
from .registry import register_model


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise conv (kernel_size^d, groups = in_channels) then pointwise 1x1 conv: (B, in_channels, *S) ->
    (B, out_channels, *S)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3,
                 bias: bool = False) -> None:
        super().__init__(
            conv_nd(spatial_dims, in_channels, in_channels, kernel_size, padding=kernel_size // 2,
                    groups=in_channels, bias=bias),
            conv_nd(spatial_dims, in_channels, out_channels, 1, bias=bias))


class RoutedResidualVisionMamba(ResidualVisionMamba):
    """:class:`~medssm.layers.ResidualVisionMamba` whose Mamba scans the tokens along ``route`` (K orderings,
    shared weights, outputs averaged on the grid); the same parameters. (B, dim, *S) -> (B, out_dim, *S)."""

    def __init__(self, spatial_dims: int, dim: int, out_dim: int | None = None, route: str | ScanRoute = "raster",
                 **kwargs) -> None:
        super().__init__(spatial_dims, dim, out_dim, **kwargs)
        self.route = build_route(route, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, out_dim, *spatial)."""
        check_grid(x, self.spatial_dims, self.dim)
        y = mix_along_route(self.mamba, channels_last(self.norm, x), self.route) + self.skip_scale * x
        return channels_last(lambda t: self.proj(self.norm(t)), y)


class ResMambaBlock(nn.Module):
    """``x + rvm2(act(norm2(rvm1(act(norm1(x))))))``, the released block: (B, C, *S) -> (B, C, *S)."""

    def __init__(self, spatial_dims: int, channels: int, num_groups: int, rvm: dict) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.act = nn.ReLU()
        self.rvm1 = RoutedResidualVisionMamba(spatial_dims, channels, **rvm)
        self.rvm2 = RoutedResidualVisionMamba(spatial_dims, channels, **rvm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rvm1(self.act(self.norm1(x)))
        return x + self.rvm2(self.act(self.norm2(y)))


class ResUpBlock(nn.Module):
    """``act(norm2(conv(act(norm1(x))) + skip_scale * x))``, conv depthwise-separable 3^d: (B, C, *S) -> same."""

    def __init__(self, spatial_dims: int, channels: int, num_groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(num_groups, channels)
        self.norm2 = nn.GroupNorm(num_groups, channels)
        self.act = nn.ReLU()
        self.conv = DepthwiseSeparableConv(spatial_dims, channels, channels, 3)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.act(self.norm1(x))) + self.skip_scale * x
        return self.act(self.norm2(y))


class LightMUNet(nn.Module):
    """LightM-UNet (see the module docstring): (batch, in_channels, *spatial) -> logits (batch, out_channels,
    *spatial), spatial_dims 2 or 3, any spatial size.

    Args:
        spatial_dims, in_channels, out_channels: MONAI's meaning.
        init_filters: width of the first level; level i has init_filters * 2**i (paper: 32).
        blocks_down: ResMambaBlocks per encoder level (paper: (1, 2, 2, 4)).
        blocks_up: ResUpBlocks per decoder level, deepest first; len(blocks_down) - 1 entries (paper: (1, 1, 1)).
        num_groups: GroupNorm groups. dropout_prob: (element-wise) dropout after the stem (None: none).
        route: scan route of every RVM layer (default raster, the paper's). ssm: False removes the selective
            scan from every Mamba (the gated-CNN control). d_state, d_conv, expand: the Mamba arguments.
        scan_backend: selective_scan backend.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, init_filters: int = 32,
                 blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] = (1, 1, 1),
                 num_groups: int = 8, dropout_prob: float | None = None, route: str | ScanRoute = "raster",
                 d_state: int = 16, d_conv: int = 4, expand: float = 2, ssm: bool = True,
                 scan_backend: str = "auto") -> None:
        super().__init__()
        if check_spatial_dims(spatial_dims) not in (2, 3):
            raise ValueError(f"LightM-UNet supports spatial_dims 2 and 3, got {spatial_dims}")
        if len(blocks_down) < 2 or len(blocks_up) != len(blocks_down) - 1:
            raise ValueError(f"blocks_up needs len(blocks_down) - 1 entries (blocks_down >= 2 levels), got "
                             f"blocks_down={tuple(blocks_down)}, blocks_up={tuple(blocks_up)}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.stride = 2 ** (len(blocks_down) - 1)
        widths = [init_filters * 2**i for i in range(len(blocks_down))]
        rvm = {"route": build_route(route, spatial_dims), "d_state": d_state, "d_conv": d_conv,
               "expand": expand, "ssm": ssm, "scan_backend": scan_backend}
        self.conv_init = DepthwiseSeparableConv(spatial_dims, in_channels, widths[0], 3)
        self.dropout = nn.Identity() if dropout_prob is None else dropout_nd(spatial_dims, dropout_prob)
        self.down_layers = nn.ModuleList()
        for i, (width, n) in enumerate(zip(widths, blocks_down, strict=True)):
            down = [] if i == 0 else [RoutedResidualVisionMamba(spatial_dims, widths[i - 1], width, **rvm),
                                      pool_nd("max", spatial_dims, kernel_size=2, stride=2)]
            blocks = [ResMambaBlock(spatial_dims, width, num_groups, rvm) for _ in range(n)]
            self.down_layers.append(nn.Sequential(*down, *blocks))
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.up_samples = nn.ModuleList()
        self.up_layers = nn.ModuleList()
        for i, n in enumerate(blocks_up):
            below, width = widths[-1 - i], widths[-2 - i]
            self.up_samples.append(nn.Sequential(conv_nd(spatial_dims, below, width, 1, bias=False),
                                                 nn.Upsample(scale_factor=2, mode=mode, align_corners=False)))
            self.up_layers.append(nn.Sequential(*[ResUpBlock(spatial_dims, width, num_groups) for _ in range(n)]))
        self.conv_final = nn.Sequential(nn.GroupNorm(num_groups, widths[0]), nn.ReLU(),
                                        DepthwiseSeparableConv(spatial_dims, widths[0], out_channels, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> (batch, out_channels, *spatial)."""
        check_grid(x, self.spatial_dims, self.in_channels)
        spatial = x.shape[2:]
        y = self.dropout(self.conv_init(pad_to_multiple(x, self.stride)))
        skips = []
        for down in self.down_layers:
            y = down(y)
            skips.append(y)
        skips.pop()
        for up, layer in zip(self.up_samples, self.up_layers, strict=True):
            y = layer(up(y) + skips.pop())
        return self.conv_final(y)[(..., *(slice(0, n) for n in spatial))]


def _build(spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    return LightMUNet(spatial_dims, in_channels, out_channels, **kwargs)


@register_model("segmentation", spatial_dims=(2, 3), input_size={2: (32, 32), 3: (16, 16, 16)})
def lightm_unet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """LightM-UNet (Liao et al. 2024): a lightweight U-Net of residual vision Mamba layers and DW convs."""
    return _build(spatial_dims, in_channels, out_channels, **kwargs)
