"""Blocks built from ops (and scans), one file per kind of block, for model files to assemble.

==========================  ================================================================================
file                        what it holds
==========================  ================================================================================
factories.py                conv / transposed conv / norm / activation / pooling / dropout by spatial_dims
norm.py, drop.py, mlp.py    RMSNormGated, ChannelsFirstLayerNorm; DropPath (stochastic depth); Mlp, ConvMlp
grid.py                     channels-first grid helpers (input check, channels-last application, tokens)
patch.py                    PatchEmbed, PatchMerging, PatchExpanding, pad_to_multiple
mamba.py, mamba2.py         the Mamba (v1) and Mamba-2 mixers (mamba_ssm's parameter names)
vision_mamba.py             MultiRouteMamba: one grouped scan over K scan routes of an N-d grid (SS2D in 2D)
vss.py                      ResidualMixerBlock, VSSBlock (VMamba), LBMambaBlock (LBMamba)
tri_oriented.py             ToMBlock and GSC (SegMamba)
multi_head_scan.py          MultiHeadScan, MultiHeadScanBlock (MHS-VM)
bimamba.py                  BiMamba, VimBlock (Vim)
residual_vision_mamba.py    ResidualVisionMamba (LightM-UNet's RVM layer)
token_routes.py             mix_along_route: one mixer over a route's orderings (LightM-UNet, U-Mamba)
==========================  ================================================================================

Every vision block takes channels-first grids (batch, C, *spatial), ``spatial_dims`` (1, 2 or 3 where the
paper's idea applies), any grid size, and passes ``scan_backend`` to its mixers.
"""

from .bimamba import BiMamba, VimBlock
from .drop import DropPath
from .factories import activation, conv_nd, conv_transpose_nd, dropout_nd, norm_nd, pool_nd
from .mamba import Mamba
from .mamba2 import Mamba2
from .mlp import ConvMlp, Mlp
from .multi_head_scan import MultiHeadScan, MultiHeadScanBlock
from .norm import ChannelsFirstLayerNorm, RMSNormGated
from .patch import PatchEmbed, PatchExpanding, PatchMerging, pad_to_multiple
from .residual_vision_mamba import ResidualVisionMamba
from .tri_oriented import GSC, ToMBlock
from .vision_mamba import MultiRouteMamba
from .vss import LBMambaBlock, ResidualMixerBlock, VSSBlock

__all__ = [
    "GSC",
    "BiMamba",
    "ChannelsFirstLayerNorm",
    "ConvMlp",
    "DropPath",
    "LBMambaBlock",
    "Mamba",
    "Mamba2",
    "Mlp",
    "MultiHeadScan",
    "MultiHeadScanBlock",
    "MultiRouteMamba",
    "PatchEmbed",
    "PatchExpanding",
    "PatchMerging",
    "RMSNormGated",
    "ResidualMixerBlock",
    "ResidualVisionMamba",
    "ToMBlock",
    "VSSBlock",
    "VimBlock",
    "activation",
    "conv_nd",
    "conv_transpose_nd",
    "dropout_nd",
    "norm_nd",
    "pad_to_multiple",
    "pool_nd",
]
