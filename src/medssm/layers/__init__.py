"""Blocks built from ops (and scans): Mamba mixers, their norms, and patch embedding/merging/expanding."""

from .mamba import Mamba
from .mamba2 import Mamba2
from .norm import RMSNormGated
from .patch import PatchEmbed, PatchExpanding, PatchMerging, pad_to_multiple
from .vision_mamba import MultiRouteMamba

__all__ = [
    "Mamba",
    "Mamba2",
    "MultiRouteMamba",
    "PatchEmbed",
    "PatchExpanding",
    "PatchMerging",
    "RMSNormGated",
    "pad_to_multiple",
]
