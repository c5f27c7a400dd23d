"""Blocks built from ops (and scans): Mamba mixers, their norms, patch embedding/merging/expanding, and the
vision Mamba blocks of the model families (VSS, Vim, RVM, ToM, multi-head scan, LBMamba)."""

from .mamba import Mamba
from .mamba2 import Mamba2
from .norm import RMSNormGated
from .patch import PatchEmbed, PatchExpanding, PatchMerging, pad_to_multiple
from .vision_blocks import (
    GSC,
    BiMamba,
    DropPath,
    LBMambaBlock,
    Mlp,
    MultiHeadScan,
    MultiHeadScanBlock,
    ResidualMixerBlock,
    ResidualVisionMamba,
    ToMBlock,
    VimBlock,
    VSSBlock,
)
from .vision_mamba import MultiRouteMamba

__all__ = [
    "BiMamba",
    "DropPath",
    "GSC",
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
    "pad_to_multiple",
]
