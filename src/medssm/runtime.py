"""Process settings that speed up medssm's CPU kernels, applied only when asked: :func:`tune_process`.

Importing medssm changes nothing in the process; the ``medssm`` command calls :func:`tune_process` before it
imports torch, and a program of your own may call it the same way. Both settings leave a value of yours alone.

OpenMP spin: PyTorch's OpenMP workers (GNU libgomp) busy-wait for GOMP_SPINCOUNT=300000 spins (5-10 ms here)
after each parallel op. On a machine with few cores that spinning thread takes a core from the "cpu" scan's
threads and slows the scan by up to 2x. 30000 spins end within a millisecond; the trade-off (pure-torch work
~5% slower, medssm's models as fast or faster) is measured by ``medssm bench openmp`` (docs/cpu-tuning.md).
libgomp reads the variable once, when torch loads it, so the setting only takes effect before torch is imported.

malloc: glibc's malloc hands big blocks back to the OS when they are freed (by munmap, or by trimming the heap's
top), so the next tensor of that size is page-faulted in again, 4 KiB at a time, with every page zeroed by the
kernel. A training step frees and reallocates the same sizes every step: the cpu scan's backward at
(1, 192, 16, 4096) spent about 1 ms of its 4.2 in 750-1500 such faults per call, and a 3D classifier's step at
64^3, batch 8, spent as much CPU time in the kernel (4.4 s: 1.5 million faults) as in its arithmetic (4.4 s),
because its activations (134 MB each) are far above the largest mmap threshold glibc accepts (32 MiB), so
raising the threshold could not keep them. medssm therefore turns mmap off for the heap's allocations
(``M_MMAP_MAX`` 0) and never trims the heap (``M_TRIM_THRESHOLD`` -1): every freed block stays with the
process for the next step's tensors, which then fault in no page (docs/benchmarks.md, "3D training step").
The cost is that the process's resident memory stays at its high-water mark until it exits (a training or
inference process reaches that peak at every step or case anyway). mallopt works whenever it is called,
unlike the OpenMP setting. Any MALLOC_*_ variable or glibc.malloc tunable of yours is left alone, and so is
any other C library; MEDSSM_MALLOC=default keeps glibc's adaptive defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPENMP_SPINCOUNT = "30000"
_OPENMP_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # <malloc.h>
_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

# What tune_process() set in this process (the notes below report it).
_applied = {"openmp": False, "malloc": False}
# Why the OpenMP spin is libgomp's default when nobody set it (openmp_spin_note says it).
_openmp_left = "medssm.tune_process() was not called"


def tune_process(openmp: bool = True, malloc: bool = True) -> dict[str, bool | str]:
    """Apply medssm's process settings (see the module docstring) unless you set your own; safe to call again.

    Args:
        openmp: set GOMP_SPINCOUNT=30000 unless GOMP_SPINCOUNT or OMP_WAIT_POLICY is set. Takes effect only
            when called before torch is imported (libgomp reads it once, when torch loads it); called later it
            changes nothing and says so.
        malloc: turn glibc's mmap for big blocks and its heap trimming off (mallopt) unless a MALLOC_*_
            variable, a glibc.malloc tunable in GLIBC_TUNABLES or MEDSSM_MALLOC=default is set, or the C
            library is not glibc.

    Returns:
        ``{"openmp": bool, "malloc": bool, "openmp_note": str, "malloc_note": str}``: whether each setting is
        in effect because medssm set it, and the one-line notes of :func:`openmp_spin_note` and
        :func:`malloc_note` (e.g. "libgomp default spin (torch was imported before medssm.tune_process())").
    """
    global _openmp_left
    if not openmp:
        _openmp_left = "medssm.tune_process(openmp=False)"
    elif not _applied["openmp"] and not set(_OPENMP_SETTINGS) & set(os.environ):
        if "torch" in sys.modules:
            _openmp_left = "torch was imported before medssm.tune_process()"
        else:
            os.environ["GOMP_SPINCOUNT"] = OPENMP_SPINCOUNT
            _applied["openmp"] = True
    if malloc and not _applied["malloc"]:
        _applied["malloc"] = _tune_malloc()
    return {"openmp": _applied["openmp"], "malloc": _applied["malloc"], "openmp_note": openmp_spin_note(),
            "malloc_note": malloc_note()}


def _tune_malloc() -> bool:
    """Apply :func:`keep_freed_memory` unless the user set malloc's settings; True when set."""
    if sys.platform != "linux" or os.environ.get("MEDSSM_MALLOC") == "default":
        return False
    if set(_MALLOC_SETTINGS) & set(os.environ):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    return keep_freed_memory()


def keep_freed_memory() -> bool:
    """glibc: serve every block from the heap (no mmap) and never trim it, so freed memory is reused rather
    than returned to the OS (see the module docstring); False where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (musl has no such symbol: not glibc, leave it alone)
    except (OSError, AttributeError):
        return False
    # -1 disables trimming (mallopt(3)); 0 mmapped blocks at a time sends every request to the heap
    return bool(libc.mallopt(_M_TRIM_THRESHOLD, -1)) and bool(libc.mallopt(_M_MMAP_MAX, 0))


def malloc_note() -> str:
    """One line on the malloc setting in effect, for ``medssm info`` and the benchmarks."""
    if _applied["malloc"]:
        return "malloc: freed memory kept (no mmap, no trim; set by medssm)"
    setting = " ".join(f"{k}={os.environ[k]}" for k in _MALLOC_SETTINGS if k in os.environ)
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        setting = (setting + " " + f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}").strip()
    return f"malloc: {setting} (yours)" if setting else "malloc: the C library's defaults"


def openmp_spin_note() -> str:
    """One line on the OpenMP spin setting in effect, for ``medssm info`` and the benchmarks."""
    if _applied["openmp"]:
        return f"GOMP_SPINCOUNT={OPENMP_SPINCOUNT} (set by medssm)"
    setting = " ".join(f"{k}={os.environ[k]}" for k in _OPENMP_SETTINGS if k in os.environ)
    if setting:
        return f"{setting} (yours)"
    return f"libgomp default spin ({_openmp_left})"
