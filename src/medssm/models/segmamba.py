"""SegMamba (Xing, Ye, Yang, Zhu & Zhu 2024, "SegMamba: Long-range Sequential Modeling Mamba For 3D Medical
Image Segmentation", arXiv:2401.13560).

Structure (:class:`SegMamba`, C_s = features[s], D = spatial_dims, S the input size padded to a multiple of 16)::

    x (B, in, *S)
    encoder stage s = 0..3:
        down_s: s = 0: stem Conv k7 s2 p3 (in -> C_0); s > 0: InstanceNorm, Conv k2 s2 (C_{s-1} -> C_s)
        GSC (gated spatial convolution, once per stage)
        depths[s] ToM layers: x + dp(Mamba_route(LayerNorm(x)))   route "tri_oriented": forward, reversed,
                                                                    inter-slice; one grouped scan, summed
        out_s = MLP(InstanceNorm(x))  (1x1 convs C_s -> 2 C_s -> C_s, GELU), x itself goes on unchanged
        -> out_s (B, C_s, *S / 2^(s+1))
    UNETR-style decoder (MONAI blocks, instance norm, residual):
        enc1 = UnetrBasicBlock(x)            (B, C_0, *S)
        enc2..enc4 = UnetrBasicBlock(out_0..out_2)   C_0 -> C_1, C_1 -> C_2, C_2 -> C_3
        hidden = UnetrBasicBlock(out_3)      (B, hidden_size, *S/16)
        dec = UnetrUpBlock(hidden, enc4) -> (enc3) -> (enc2) -> (enc1) -> (B, C_0, *S)
        UnetrBasicBlock(C_0 -> C_0), UnetOutBlock -> (B, out_channels, *S), cropped to the input size

Differences from the released code (ge-xing/SegMamba, model_segmamba/segmamba.py):

- The ToM layer's mixer is :class:`~medssm.layers.MultiRouteMamba` (through :class:`~medssm.layers.VSSBlock`
  with no MLP; the same as :class:`~medssm.layers.ToMBlock` but with ``route=`` open): one centred D-d
  depthwise conv (d_conv 3) before the routes and a LayerNorm before the gate, where the released bimamba
  "v3" has a causal 1D conv (width 4) per direction and no norm; the three directions' scans share in/out
  projections in both. Parameter counts therefore differ slightly (see tests/models/test_segmamba.py).
- The released inter-slice scan needs ``nslices`` fixed per stage (64, 32, 16, 8: a 128^3 input); the
  "tri_oriented" route reads the grid's shape, so any input size works.
- GSC's gate: ``gsc_gate="mul"`` is the paper's equation (the default); the released code adds ("add").
- Any input size: padded to a multiple of 16 (the total stride), and along the last axis by another 16 where
  the deepest grid would otherwise be a single position (its instance norms need more than one).
- 2D falls out of the same code (spatial_dims=2; tri_oriented in 2D: row-major, reversed, column-major).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

from ..layers import GSC, ConvMlp, VSSBlock, pad_to_multiple
from ..layers.factories import conv_nd, norm_nd
from .registry import register_model


class SegMambaEncoder(nn.Module):
    """SegMamba's encoder: (batch, in_channels, *spatial) -> four stage outputs, stage s (batch, C_s,
    *spatial / 2^(s+1)). The input must be a multiple of 16 along each axis. Arguments as :class:`SegMamba`."""

    def __init__(self, spatial_dims: int, in_channels: int, features: Sequence[int], depths: Sequence[int],
                 route: str, d_state: int, expand: float, d_conv: int, gsc_gate: str, drop_path_rate: float,
                 scan_backend: str, ssm: bool) -> None:
        super().__init__()
        rates = iter(torch.linspace(0, drop_path_rate, sum(depths)).tolist())
        self.downsample_layers = nn.ModuleList([conv_nd(spatial_dims, in_channels, features[0], 7, stride=2,
                                                        padding=3)])
        for s in range(1, len(features)):
            self.downsample_layers.append(nn.Sequential(
                norm_nd("instance", spatial_dims, features[s - 1]),
                conv_nd(spatial_dims, features[s - 1], features[s], 2, stride=2)))
        self.gscs = nn.ModuleList(GSC(spatial_dims, width, gate=gsc_gate) for width in features)
        self.stages = nn.ModuleList(
            nn.Sequential(*(VSSBlock(spatial_dims, width, d_state=d_state, expand=expand, route=route,
                                     d_conv=d_conv, mlp_ratio=0.0, drop_path=next(rates), scan_backend=scan_backend,
                                     ssm=ssm)
                            for _ in range(depth)))
            for width, depth in zip(features, depths, strict=True))
        self.norms = nn.ModuleList(norm_nd("instance", spatial_dims, width) for width in features)
        self.mlps = nn.ModuleList(ConvMlp(spatial_dims, width, hidden_dim=2 * width) for width in features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for down, gsc, stage, norm, mlp in zip(self.downsample_layers, self.gscs, self.stages, self.norms,
                                               self.mlps, strict=True):
            x = stage(gsc(down(x)))
            outs.append(mlp(norm(x)))
        return outs


class SegMamba(nn.Module):
    """SegMamba: (batch, in_channels, *spatial) -> logits (batch, out_channels, *spatial), spatial_dims 3 (the
    paper) or 2, any spatial size. See the module docstring for the structure and the differences from the
    released code.

    Args:
        spatial_dims, in_channels, out_channels: MONAI's meaning.
        features: encoder widths per stage (the paper's (48, 96, 192, 384)); four stages.
        depths: ToM layers per stage. hidden_size: width of the deepest decoder block (released: 768).
        route: scan route of every ToM layer (default "tri_oriented", the paper's).
        d_state, expand, d_conv: the Mamba mixer's state size, expansion and depthwise conv kernel.
        gsc_gate: "mul" (the paper's GSC) or "add" (the released code's).
        drop_path_rate: stochastic depth rising linearly over the ToM layers (released: 0).
        norm_name, res_block: the MONAI decoder blocks' norm and residual flag.
        scan_backend: selective_scan backend. ssm: False removes the selective scan (the gated-CNN control).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (48, 96, 192, 384), depths: Sequence[int] = (2, 2, 2, 2),
                 hidden_size: int = 768, route: str = "tri_oriented", d_state: int = 16, expand: float = 2.0,
                 d_conv: int = 3, gsc_gate: str = "mul", drop_path_rate: float = 0.0,
                 norm_name: str | tuple = "instance", res_block: bool = True, scan_backend: str = "auto",
                 ssm: bool = True) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"SegMamba supports spatial_dims 2 or 3, got {spatial_dims!r}")
        if len(features) != 4 or len(depths) != 4:
            raise ValueError(f"features and depths need four stages, got {tuple(features)}, {tuple(depths)}")
        self.spatial_dims = spatial_dims
        self.stride = 16
        self.vit = SegMambaEncoder(spatial_dims, in_channels, features, depths, route, d_state, expand, d_conv,
                                   gsc_gate, drop_path_rate, scan_backend, ssm)  # the released code's name

        def basic(cin: int, cout: int) -> nn.Module:
            return UnetrBasicBlock(spatial_dims, cin, cout, kernel_size=3, stride=1, norm_name=norm_name,
                                   res_block=res_block)

        def up(cin: int, cout: int) -> nn.Module:
            return UnetrUpBlock(spatial_dims, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=norm_name,
                                res_block=res_block)

        self.encoder1 = basic(in_channels, features[0])
        self.encoder2 = basic(features[0], features[1])
        self.encoder3 = basic(features[1], features[2])
        self.encoder4 = basic(features[2], features[3])
        self.encoder5 = basic(features[3], hidden_size)
        self.decoder5 = up(hidden_size, features[3])
        self.decoder4 = up(features[3], features[2])
        self.decoder3 = up(features[2], features[1])
        self.decoder2 = up(features[1], features[0])
        self.decoder1 = basic(features[0], features[0])
        self.out = UnetOutBlock(spatial_dims, features[0], out_channels)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad to a multiple of 16, and the last axis by 16 more if the deepest grid would be one position."""
        x = pad_to_multiple(x, self.stride)
        if math.prod(n // self.stride for n in x.shape[2:]) == 1:
            x = nn.functional.pad(x, (0, self.stride))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> (batch, out_channels, *spatial)."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"x must be (batch, channels, *spatial) with {self.spatial_dims} spatial dims, "
                             f"got {tuple(x.shape)}")
        spatial = x.shape[2:]
        x = self._pad(x)
        outs = self.vit(x)
        enc1 = self.encoder1(x)
        enc2 = self.encoder2(outs[0])
        enc3 = self.encoder3(outs[1])
        enc4 = self.encoder4(outs[2])
        hidden = self.encoder5(outs[3])
        y = self.decoder2(self.decoder3(self.decoder4(self.decoder5(hidden, enc4), enc3), enc2), enc1)
        y = self.out(self.decoder1(y))
        return y[(..., *(slice(0, size) for size in spatial))]


# Small default sizes keep the registry-wide tests quick: the paper-width decoder's convolutions dominate.
@register_model("segmentation", spatial_dims=(2, 3), input_size={2: (32, 32), 3: (32, 16, 16)})
def segmamba(spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """SegMamba (Xing et al. 2024): GSC + tri-orientated Mamba encoder, UNETR-style conv decoder."""
    return SegMamba(spatial_dims, in_channels, out_channels, **kwargs)
