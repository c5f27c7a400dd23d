"""medssm: Mamba (selective state-space) models for medical image and signal analysis.

Importing medssm leaves the process as it is; :func:`tune_process` applies the OpenMP and malloc settings that
speed up its CPU kernels (the ``medssm`` command calls it first thing).
"""

from .runtime import malloc_note, openmp_spin_note, tune_process

__version__ = "0.1.0"

__all__ = ["__version__", "malloc_note", "openmp_spin_note", "tune_process"]
