"""Output files that are never left half-written and never overwritten by accident."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path`` in one step.

    If the block raises (or the process dies), ``path`` keeps its old content (or stays absent) and the
    temporary file is removed where possible. The temporary name keeps the target's suffixes, so writers
    that pick a format from the name (nibabel, Pillow, matplotlib) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=f".partial{suffix}",
                                    dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes the file 0600; outputs get the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_dir_beside(path: str | Path) -> Path:
    """A new empty folder next to ``path`` (``.<name>.partial-*``) to be filled and then renamed onto it,
    with the permissions the umask gives any other folder (mkdtemp alone makes it 0700)."""
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_output(path: str | Path, overwrite: bool, what: str = "output") -> Path:
    """Refuse to replace an existing file (or a non-empty folder) unless ``overwrite``; return the path."""
    path = Path(path)
    exists = path.is_file() or (path.is_dir() and any(path.iterdir()))
    if exists and not overwrite:
        raise FileExistsError(f"{what} {path} already exists; pass --overwrite to replace it")
    return path
