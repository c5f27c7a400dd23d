"""medssm: Mamba (selective state-space) models for medical image and signal analysis."""

__version__ = "0.1.0"
