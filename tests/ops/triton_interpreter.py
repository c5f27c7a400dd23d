"""Triton's interpreter for the triton backends' CPU tests.

Triton fixes the mode of its own library (tl.sum, tl.sigmoid, ... are @triton.jit functions) when it is first
imported, from TRITON_INTERPRET. So the test modules call :func:`interpreter_skip_reason` at import, which
imports triton with the variable set (for this import only: the variable is restored at once, so that other
tests see the environment unchanged; the kernels' modules opt in again per test with monkeypatch). Where a
CUDA GPU is present, triton stays compiled and the GPU tests check the kernels instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch


def interpreter_skip_reason() -> str | None:
    """Import triton in interpreter mode; None when that worked, else why the interpreter tests must skip."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install -e '.[dev]')"
    if torch.cuda.is_available():
        return "a CUDA GPU is present: triton stays compiled and the *_gpu tests check the kernels"
    if "triton" not in sys.modules:
        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            import triton.language  # noqa: F401
            try:  # imported lazily by triton on the first launch; its checks read the mode again then
                import triton.experimental.gluon  # noqa: F401
            except ImportError:
                pass
        finally:
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous
    from medssm.ops.scan_triton import triton_interprets

    if not triton_interprets():
        return "triton was imported earlier in this process without TRITON_INTERPRET=1"
    return None
