"""MambaIR (Guo et al. 2024, "MambaIR: A Simple Baseline for Image Restoration with State-Space Model",
arXiv:2402.15648), the denoising configuration, for spatial_dims 1, 2 or 3 and any input size.

(batch, C, *spatial) -> (batch, C, *spatial), the restored image::

    f0 = conv_first(x)                                   3x3 conv to embed_dim (shallow features)
    y  = LN(f0) -> RSSG_1 -> ... -> RSSG_G -> LN          residual state-space groups
    RSSG: y + conv3(RSSB_1(... RSSB_d(y)))                a conv and a residual after each group
    RSSB: y = s1 * y + VSSM(LN(y));  y = s2 * y + CAB(LN(y))   s1, s2 learnable per-channel scales
    out = x + conv_last(conv_after_body(y) + f0)          global residual: input + predicted residual

VSSM is MambaIR's SS2D (in_proj, depthwise 3x3 conv, SiLU, four-direction cross scan, LayerNorm, SiLU gate,
out_proj): :class:`~medssm.layers.MultiRouteMamba` with route "cross" (K = 2 * spatial_dims), expand =
MambaIR's ``mlp_ratio``. CAB = conv3 -> GELU -> conv3 -> channel attention
(:class:`~medssm.layers.restoration.CAB`). The skeleton is
:class:`~medssm.layers.restoration.ResidualGroupRestorer`.

Sizes: the paper's Gaussian colour-denoising model is ``embed_dim=180, depths=(6,) * 6, mlp_ratio=1.2``
(``MAMBAIR_DENOISE``, 15.7M parameters at in_channels 3); its light-SR size ``embed_dim=60, depths=(6,) * 4,
d_state=10, mlp_ratio=1.2`` (``MAMBAIR_LIGHT``; the light-SR up-sampler and its depthwise CAB are not built,
the body is). The registered default is a small CPU model: ``embed_dim=32, depths=(2, 2), mlp_ratio=1.2``.

Differences from the released code (``basicsr/archs/mambair_arch.py``): channels-first throughout (the
token reshapes change no arithmetic); any spatial_dims (the 3D cross scan has six directions); no RGB mean
subtraction; drop-path 0 by default (the release: 0.1, linear in depth; ``drop_path_rate`` sets it); the
depthwise conv is ``conv`` (the release: ``conv2d``), so a released state dict loads after renaming
``self_attention.conv2d.`` to ``self_attention.conv.``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from ..layers.restoration import (
    CAB,
    ResidualGroup,
    ResidualGroupRestorer,
    ScaledResidualBlock,
    check_depths,
    check_same_channels,
    drop_path_rates,
)
from ..layers.vision_mamba import MultiRouteMamba
from .registry import register_model

MAMBAIR_DENOISE = {"embed_dim": 180, "depths": (6, 6, 6, 6, 6, 6), "mlp_ratio": 1.2}
MAMBAIR_LIGHT = {"embed_dim": 60, "depths": (6, 6, 6, 6), "d_state": 10, "mlp_ratio": 1.2}


class MambaIR(ResidualGroupRestorer):
    """MambaIR for denoising: (batch, in_channels, *spatial) -> (batch, in_channels, *spatial).

    Args:
        spatial_dims: 1, 2 or 3. in_channels: image channels (also the output's).
        embed_dim: feature width. depths: RSSBs per residual group (one entry per group).
        d_state: SSM state size. mlp_ratio: the VSSM's expand (d_inner / embed_dim; MambaIR's name).
        route: scan route of the VSSM (default "cross": SS2D's four directions in 2D).
        compress_ratio, squeeze_factor: the CAB's (3 and 30 in MambaIR).
        drop_path_rate: largest stochastic-depth rate (linear over the blocks).
        scan_backend: selective_scan backend. ssm: False removes the selective scan from every VSSM.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, embed_dim: int = 32,
                 depths: Sequence[int] = (2, 2), d_state: int = 16, mlp_ratio: float = 1.2,
                 route: str | None = None, compress_ratio: int = 3, squeeze_factor: int = 30,
                 drop_path_rate: float = 0.0, scan_backend: str = "auto", ssm: bool = True) -> None:
        depths = check_depths(depths, embed_dim)
        rates = iter(drop_path_rates(depths, drop_path_rate))
        route = route or "cross"

        def block() -> nn.Module:
            op = MultiRouteMamba(spatial_dims, embed_dim, d_state=d_state, expand=mlp_ratio, route=route,
                                 d_conv=3, scan_backend=scan_backend, ssm=ssm)
            ffn = CAB(spatial_dims, embed_dim, compress_ratio, squeeze_factor)
            return ScaledResidualBlock(spatial_dims, embed_dim, op, ffn, drop_path=next(rates))

        groups = [ResidualGroup(spatial_dims, embed_dim, [block() for _ in range(depth)]) for depth in depths]
        super().__init__(spatial_dims, in_channels, embed_dim, groups)


@register_model("restoration", spatial_dims=(1, 2, 3), input_size={1: (64,), 2: (24, 24), 3: (8, 8, 8)})
def mambair(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, **kwargs) -> nn.Module:
    """MambaIR (Guo et al. 2024): residual state-space groups (SS2D + CAB, scaled skips), global residual."""
    check_same_channels(in_channels, out_channels)
    return MambaIR(spatial_dims, in_channels, **kwargs)
