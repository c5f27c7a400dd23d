"""MaIR (Li et al. 2025, "MaIR: A Locality- and Continuity-Preserving Mamba for Image Restoration",
arXiv:2412.20066), the denoising configuration, for spatial_dims 2 or 3 and any input size.

(batch, C, *spatial) -> (batch, C, *spatial), the restored image. The skeleton is MambaIR's
(:class:`~medssm.layers.restoration.ResidualGroupRestorer`: shallow conv, residual groups each closed by a
conv and a residual, conv after the body, global residual); MaIR's residual Mamba block (RMB) is::

    y = s1 * y + VMM(LN(y));  y = s2 * y + MLP(LN(y))     s1, s2 learnable per-channel scales

VMM: in_proj, depthwise 3x3 conv, SiLU, then the selective scan along the four nested S-shaped scans (NSS,
route ``nested_s``: stripes of ``scan_width`` columns scanned as boustrophedons of short rows, the stripes
chained; the grid, the grid turned by 180 degrees and both transposed), the four outputs put back on the
grid and merged by sequence shuffle attention (SSA,
:class:`~medssm.layers.restoration.SequenceShuffleAttention`: a sigmoid weight per route and channel from a
per-channel K x K mix of their means), LayerNorm, SiLU gate, out_proj. Every second block shifts the stripe
borders by ``scan_width // 2`` (the release's ``shift_size``). This is
:class:`~medssm.layers.MultiRouteMamba` with route ``nested_s`` and ``merge="ssa"``.

Sizes: the paper's colour-denoising model is ``embed_dim=180, depths=(6,) * 6, ssm_ratio=1.3,
mlp_ratio=2.0, scan_width=4`` (``MAIR_DENOISE``); MaIR-S (light SR body) ``embed_dim=60, depths=(6,) * 4,
ssm_ratio=1.4, mlp_ratio=1.6`` (``MAIR_LIGHT``). The registered default is a small CPU model:
``embed_dim=32, depths=(2, 2)``, the paper's ratios.

Differences from the released code (``basicsr/archs/mair_arch.py``, ``shift_scanf_util.py``): channels-first
throughout; the MLP is 1x1 convolutions (``ConvMlp``; the release's Linear weights reshape onto them);
3D grids (the NSS in every slice, slices chained); no RGB mean subtraction; drop-path 0 by default (the
release: 0.1); with another ``route=`` every block uses that route (SSA when it has several orders, else
the plain sum); with ``ssm=False`` the routes, the scan and the SSA that merges them are removed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from ..layers.mlp import ConvMlp
from ..layers.restoration import (
    ResidualGroup,
    ResidualGroupRestorer,
    ScaledResidualBlock,
    check_depths,
    check_same_channels,
    drop_path_rates,
)
from ..layers.vision_mamba import MultiRouteMamba
from ..scans import ScanRoute, get_route
from .registry import register_model

MAIR_DENOISE = {"embed_dim": 180, "depths": (6, 6, 6, 6, 6, 6), "ssm_ratio": 1.3, "mlp_ratio": 2.0, "scan_width": 4}
MAIR_LIGHT = {"embed_dim": 60, "depths": (6, 6, 6, 6), "ssm_ratio": 1.4, "mlp_ratio": 1.6, "scan_width": 4}


def block_route(route: str | None, scan_width: int, index: int, spatial_dims: int) -> ScanRoute:
    """The route of block ``index``: nested_s with the stripe borders shifted on odd blocks, or ``route``."""
    if route is None or route == "nested_s":
        return get_route("nested_s", width=scan_width, shift=scan_width // 2 if index % 2 else 0)
    return get_route(route)


class MaIR(ResidualGroupRestorer):
    """MaIR for denoising: (batch, in_channels, *spatial) -> (batch, in_channels, *spatial).

    Args:
        spatial_dims: 2 or 3 (the nested S-scan needs two axes). in_channels: image channels (also output's).
        embed_dim: feature width. depths: RMBs per residual group (one entry per group).
        d_state: SSM state size. ssm_ratio: the VMM's expand. mlp_ratio: the MLP's hidden width / embed_dim.
        scan_width: NSS stripe width (MaIR's ``scan_len``). route: None / "nested_s" (MaIR's) or another
            route name for every block.
        drop_path_rate: largest stochastic-depth rate (linear over the blocks).
        scan_backend: selective_scan backend. ssm: False removes the selective scan (and SSA) from every VMM.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, embed_dim: int = 32,
                 depths: Sequence[int] = (2, 2), d_state: int = 16, ssm_ratio: float = 1.3, mlp_ratio: float = 2.0,
                 scan_width: int = 4, route: str | None = None, drop_path_rate: float = 0.0,
                 scan_backend: str = "auto", ssm: bool = True) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"mair supports spatial_dims 2 and 3 (its scan cuts stripes of a plane), "
                             f"got {spatial_dims}")
        depths = check_depths(depths, embed_dim)
        rates = iter(drop_path_rates(depths, drop_path_rate))

        def block(index: int) -> nn.Module:
            scan = block_route(route, scan_width, index, spatial_dims)
            merge = "ssa" if scan.num_orders(spatial_dims) > 1 else "sum"
            op = MultiRouteMamba(spatial_dims, embed_dim, d_state=d_state, expand=ssm_ratio, route=scan, d_conv=3,
                                 merge=merge, scan_backend=scan_backend, ssm=ssm)
            ffn = ConvMlp(spatial_dims, embed_dim, mlp_ratio=mlp_ratio)
            return ScaledResidualBlock(spatial_dims, embed_dim, op, ffn, drop_path=next(rates))

        groups = [ResidualGroup(spatial_dims, embed_dim, [block(i) for i in range(depth)]) for depth in depths]
        super().__init__(spatial_dims, in_channels, embed_dim, groups)


@register_model("restoration", spatial_dims=(2, 3), input_size={2: (24, 24), 3: (8, 8, 8)})
def mair(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, **kwargs) -> nn.Module:
    """MaIR (Li et al. 2025): nested S-shaped scans merged by sequence shuffle attention, MambaIR's skeleton."""
    check_same_channels(in_channels, out_channels)
    return MaIR(spatial_dims, in_channels, **kwargs)
