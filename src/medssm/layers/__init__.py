"""Blocks built from ops (and scans): Mamba mixers and their norms."""

from .mamba import Mamba
from .mamba2 import Mamba2
from .norm import RMSNormGated

__all__ = ["Mamba", "Mamba2", "RMSNormGated"]
