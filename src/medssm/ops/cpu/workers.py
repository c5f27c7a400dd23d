"""The "cpu" kernels' threads: a kernel run over contiguous job ranges, and the scan's job lists.

The kernels release the GIL (nogil), so plain Python threads run them in parallel. We use this rather than
numba's parallel=True: numba's OpenMP pool and PyTorch's spin-wait against each other on a small machine.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from .sizes import LANES, TILE

_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (owning process id, pool)


def worker_count(n_jobs: int) -> int:
    """Threads for ``n_jobs`` jobs: torch's thread count, at most one per job."""
    return max(1, min(torch.get_num_threads(), n_jobs))


def run_jobs(kernel: Callable[..., None], n_jobs: int, workers: int, *args, with_tid: bool = False) -> None:
    """Run ``kernel(lo, hi, [worker,] *args)`` over ``workers`` contiguous job ranges, one per thread.

    The calling thread runs the first range itself. ``workers`` is passed in, not re-read, because the
    backward sizes its per-worker partial sums with it.
    """
    global _POOL
    bounds = [n_jobs * i // workers for i in range(workers + 1)]
    ranges = [(bounds[i], bounds[i + 1]) + ((i,) if with_tid else ()) for i in range(workers)]
    if workers > 1 and (_POOL is None or _POOL[0] != os.getpid() or _POOL[1]._max_workers < workers - 1):
        # a pool inherited through fork has no threads in the child: make a new one per process
        pool = ThreadPoolExecutor(max_workers=max(workers, os.cpu_count() or 1) - 1, thread_name_prefix="medssm")
        _POOL = (os.getpid(), pool)
    futures = [_POOL[1].submit(kernel, *r, *args) for r in ranges[1:]] if workers > 1 else []
    kernel(*ranges[0], *args)
    for future in futures:
        future.result()


@functools.lru_cache(maxsize=64)  # the scan plans its jobs on every call
def job_lists(batch: int, dim: int, chan_per_group: int, width: int = LANES
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split (batch, d) into blocks of at most ``width`` channels that never straddle a group boundary: each
    block's batch element, first channel and width (shared between calls: not to be modified)."""
    starts, widths = [], []
    for g0 in range(0, dim, chan_per_group):
        for c0 in range(g0, g0 + chan_per_group, width):
            starts.append(c0)
            widths.append(min(width, g0 + chan_per_group - c0))
    n_blocks = len(starts)
    job_b = np.repeat(np.arange(batch, dtype=np.int64), n_blocks)
    job_c = np.tile(np.asarray(starts, dtype=np.int64), batch)
    job_n = np.tile(np.asarray(widths, dtype=np.int64), batch)
    return job_b, job_c, job_n


def block_width(batch: int, dim: int, chan_per_group: int, threads: int) -> int:
    """Channels per job: LANES, or TILE when the narrower blocks share the work among the threads clearly
    better (a makespan 10% shorter; the backward has a kernel compiled for each width). Where LANES
    balances, TILE measured slower in the forward and no faster overall in the backward, so LANES stays."""
    def makespan(width: int) -> float:
        return -(-len(job_lists(batch, dim, chan_per_group, width)[0]) // threads) * width

    return TILE if makespan(TILE) * 1.1 < makespan(LANES) else LANES
