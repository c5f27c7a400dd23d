"""medssm: Mamba (selective state-space) models for medical image and signal analysis."""

import os
import sys

__version__ = "0.1.0"

# PyTorch's OpenMP workers (GNU libgomp) busy-wait for GOMP_SPINCOUNT=300000 spins (5-10 ms here) after each
# parallel op. On a machine with few cores that spinning thread takes a core from the "cpu" scan's threads
# and slows the scan by up to 2x. 30000 spins end within a millisecond; the trade-off (pure-torch work ~5%
# slower, medssm's models as fast or faster) is measured by `medssm bench openmp` and tabled in the README.
# libgomp reads the variable once, when torch loads it, so this only takes effect when medssm is imported
# before torch (the medssm command always is); a user's own setting is left alone.
OPENMP_SPIN_LIMITED = "torch" not in sys.modules and not {"GOMP_SPINCOUNT", "OMP_WAIT_POLICY"} & set(os.environ)
if OPENMP_SPIN_LIMITED:
    os.environ["GOMP_SPINCOUNT"] = "30000"


def openmp_spin_note() -> str:
    """One line on the OpenMP spin setting in effect, for ``medssm info`` and the benchmarks."""
    if OPENMP_SPIN_LIMITED:
        return "GOMP_SPINCOUNT=30000 (set by medssm)"
    setting = " ".join(f"{k}={os.environ[k]}" for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY") if k in os.environ)
    return f"{setting} (yours)" if setting else "libgomp default spin (torch was imported before medssm)"
