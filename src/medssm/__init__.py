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


# glibc's malloc hands big blocks back to the OS when they are freed (by munmap, or by trimming the heap's top),
# so the next tensor of that size is page-faulted in again, 4 KiB at a time, with every page zeroed by the
# kernel. A training step frees and reallocates the same few sizes every step: the cpu scan's backward at
# (1, 192, 16, 4096) spent about 1 ms of its 4.2 in 750-1500 such faults per call. Keeping up to
# _MALLOC_KEEP freed bytes at the heap's top, and serving blocks up to 32 MiB (the ceiling of glibc's own
# adaptive threshold) from the heap, removes them; `medssm bench layer`'s Mamba and Mamba2 layers ran
# forward+backward as fast or faster in every paired run (README, "Memory allocator"). mallopt works whenever
# it is called, unlike the OpenMP setting above. Any MALLOC_*_ variable or glibc.malloc tunable of yours is
# left alone, and so is any other C library; MEDSSM_MALLOC=default keeps glibc's adaptive defaults.
_MALLOC_MMAP_THRESHOLD = 32 << 20
_MALLOC_KEEP = 256 << 20
_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _tune_malloc() -> bool:
    """Set glibc's mmap and trim thresholds (see above) unless the user set malloc's; True when set."""
    if sys.platform != "linux" or os.environ.get("MEDSSM_MALLOC") == "default":
        return False
    if set(_MALLOC_SETTINGS) & set(os.environ):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (musl has no such symbol: not glibc, leave it alone)
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    # the mmap threshold first: setting either one turns glibc's adaptive thresholds off
    return bool(libc.mallopt(m_mmap_threshold, _MALLOC_MMAP_THRESHOLD)) and bool(
        libc.mallopt(m_trim_threshold, _MALLOC_KEEP))


MALLOC_TUNED = _tune_malloc()


def malloc_note() -> str:
    """One line on the malloc setting in effect, for ``medssm info`` and the benchmarks."""
    if MALLOC_TUNED:
        return (f"malloc: mmap threshold {_MALLOC_MMAP_THRESHOLD >> 20} MiB, trim threshold {_MALLOC_KEEP >> 20} MiB "
                "(set by medssm)")
    setting = " ".join(f"{k}={os.environ[k]}" for k in _MALLOC_SETTINGS if k in os.environ)
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        setting = (setting + " " + f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}").strip()
    return f"malloc: {setting} (yours)" if setting else "malloc: the C library's defaults"


def openmp_spin_note() -> str:
    """One line on the OpenMP spin setting in effect, for ``medssm info`` and the benchmarks."""
    if OPENMP_SPIN_LIMITED:
        return "GOMP_SPINCOUNT=30000 (set by medssm)"
    setting = " ".join(f"{k}={os.environ[k]}" for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY") if k in os.environ)
    return f"{setting} (yours)" if setting else "libgomp default spin (torch was imported before medssm)"
