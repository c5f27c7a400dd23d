"""Import numba with an on-disk cache that is writable.

numba's ``cache=True`` writes next to the source (``__pycache__``) and fails at import when that folder
and its per-user fallback are read-only (site-packages installs, containers). We point NUMBA_CACHE_DIR at a
writable per-user temporary folder in that case, before numba reads its configuration.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".medssm-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def _choose_cache_dir() -> None:
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured and _writable(Path(configured)):
        return
    if not configured and _writable(Path(__file__).parent / "__pycache__"):
        return  # numba's default location works
    user = os.environ.get("USER") or str(os.getuid() if hasattr(os, "getuid") else "user")
    os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / f"medssm-numba-cache-{user}")


_choose_cache_dir()

import numba  # noqa: E402  (must follow the cache-dir choice)

numba.config.CACHE_DIR = os.environ.get("NUMBA_CACHE_DIR", numba.config.CACHE_DIR)

__all__ = ["numba"]
