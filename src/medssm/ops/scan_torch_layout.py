"""The "torch" scan backend's step layout: how sequences are cut into chunks and laid out for its passes.

The sequence, zero-padded to ``nc * T`` steps, is cut into ``nc`` chunks of ``T`` steps that are all scanned
at once: one (batch, nc, G, N, d/G) "slab" per step. :func:`chunk_plan` picks T, :class:`StepLayout`
converts between the public layouts and this one, and the small helpers slice blocks of steps out of it.
"""

from __future__ import annotations

import itertools
import math

import torch

# Steps per block. Larger blocks mean fewer, larger ops (less Python overhead) but more memory: the
# backward keeps T/k checkpoint slabs (1/k of the b*d*L*N volume) plus a few blocks of k slabs.
BLOCK = 8
# Default chunking off CPU: T ~ 2 sqrt(L), at least this.
_MIN_CHUNK = 256
# Default chunking on CPU: elements per step slab (b * nc * d * N), and the shortest chunk. Slabs of about
# 100 K floats (a block of k of them ~3 MB) were fastest at every benchmark shape on the 2-core machine.
_CPU_SLAB = 96 * 1024
_MIN_CPU_CHUNK = 32


def chunk_plan(seqlen: int, chunk_size: int | None, d_state: int, slab: int | None = None) -> tuple[int, int]:
    """Chunk length T and number of chunks nc = ceil(seqlen / T).

    The default balances the T sequential steps within chunks (Python overhead per step) against the size
    of each op (b*d*N*nc elements). On CPU (``slab`` = b*d*N given) it aims at ops that stay in cache:
    nc ~ ``_CPU_SLAB`` / slab chunks (one when b*d*N alone is 1.5 times that or more), with T at least
    ``_MIN_CPU_CHUNK`` and at least 4 N, so that the chunk-start states autograd keeps (b*d*N*L/T) are at
    most a quarter of the output's size. Elsewhere T ~ 2 sqrt(L), at least ``_MIN_CHUNK``. Both are
    multiples of the block size.
    """
    if chunk_size is None and slab is not None:
        chunks = max(1, round(_CPU_SLAB / slab))
        chunk_size = max(_MIN_CPU_CHUNK, 4 * d_state, BLOCK * -(-seqlen // (chunks * BLOCK)))
    elif chunk_size is None:
        chunk_size = max(_MIN_CHUNK, BLOCK * round(2 * math.sqrt(seqlen) / BLOCK))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    T = min(chunk_size, seqlen)
    return T, -(-seqlen // T)


def _copy_transposed(dst: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """dst[...] = src[...].T for src (..., P, Q) and dst (..., Q, P) whose matrices have contiguous rows.

    On CPU, with long rows (Q > P >= 32), one 2-D copy per matrix: torch copies a transposed 2-D matrix
    with a blocked kernel, but a batched transposed copy element by element, reading with stride Q:
    (192, 4096) -> (4096, 192) takes 0.29 vs 0.78 ms on the 2-core machine (and 0.11 vs 0.23 ms at
    (64, 4096)). In the other direction the batched copy is as fast or faster.
    """
    P, Q = src.shape[-2:]
    if src.device.type != "cpu" or not 32 <= P < Q or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return dst.copy_(src.transpose(-1, -2))
    for index in itertools.product(*map(range, src.shape[:-2])):
        dst[index].copy_(src[index].t())
    return dst


def to_steps(x: torch.Tensor, T: int, nc: int) -> torch.Tensor:
    """(b, X, Y, L) -> (b, nc, X, T, Y), zero-padded to nc*T steps; step t = c*T + j lands at [:, c, :, j].

    Transposes (Y, L) -> (L, Y) first and then moves whole rows of Y: ~2x faster than one permuted copy
    on CPU, whose reads would stride by L for every element.
    """
    b, X, Y, L = x.shape
    xt = x.new_empty(b, X, nc * T, Y) if nc * T == L else x.new_zeros(b, X, nc * T, Y)
    _copy_transposed(xt[:, :, :L] if nc * T > L else xt, x)
    return xt.view(b, X, nc, T, Y).transpose(1, 2).contiguous()


def from_steps(x: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`to_steps`: (b, nc, X, T, Y) -> (b, X, Y, seqlen), in the same two moves."""
    b, nc, X, T, Y = x.shape
    rows = x.transpose(1, 2).reshape(b, X, nc * T, Y)[:, :, :seqlen]
    return rows.transpose(-1, -2).contiguous()


class StepLayout:
    """Converts between the public layouts and the step layout of the passes.

    Channels split as d = G * dg so that B/C group g covers channel block g. A slab (the states of one
    step of every chunk) is (b, nc, G, N, dg): channels innermost (contiguous, so elementwise ops
    vectorise), N next to them (so contractions over N are batched matmuls). Sequences keep the step
    within the chunk at dim 3 (``STEP``), after the chunk: per-channel (b, nc, G, T, 1, dg), B/C
    (b, nc, G, T, N, 1); (d, N) matrices are (G, 1, N, dg) and (d,) vectors (G, 1, 1, dg).

    Chunks outermost, because torch splits an op between threads by its outermost dimension: then
    every op, whether it covers a block of steps or one step, gives each thread the same chunks, and
    no thread reads what another wrote. When the host puts the two vCPUs of the 2-core machine on
    different L3 caches, steps outermost made this backend's forward almost 2x slower.
    """

    def __init__(self, batch: int, dim: int, d_state: int, seqlen: int, groups: int, chunk_size: int | None,
                 cpu: bool):
        self.b, self.d, self.N, self.L, self.G = batch, dim, d_state, seqlen, groups
        self.dg = dim // groups
        self.T, self.nc = chunk_plan(seqlen, chunk_size, d_state, batch * dim * d_state if cpu else None)

    def seq_in(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d, L) -> (b, nc, G, T, 1, dg), in fp32."""
        return to_steps(x.float().reshape(self.b, self.G, self.dg, self.L), self.T, self.nc).unsqueeze(-2)

    def seq_out(self, x: torch.Tensor) -> torch.Tensor:
        """(b, nc, G, T, 1, dg) -> (b, d, L)."""
        return from_steps(x.squeeze(-2), self.L).reshape(self.b, self.d, self.L)

    def mat_in(self, x: torch.Tensor) -> torch.Tensor:
        """(d, N) -> (G, 1, N, dg), in fp32."""
        return x.float().reshape(self.G, 1, self.dg, self.N).transpose(-1, -2).contiguous()

    def mat_out(self, x: torch.Tensor) -> torch.Tensor:
        """(G, 1, N, dg) -> (d, N)."""
        return x.squeeze(1).transpose(1, 2).reshape(self.d, self.N)

    def vec_in(self, x: torch.Tensor) -> torch.Tensor:
        """(d,) -> (G, 1, 1, dg), in fp32."""
        return x.float().reshape(self.G, 1, 1, self.dg)

    def bc_in(self, x: torch.Tensor) -> torch.Tensor:
        """B or C: fixed (d, N) -> (G, 1, N, dg); grouped (b, G, N, L) -> (b, nc, G, T, N, 1)."""
        return self.mat_in(x) if x.dim() == 2 else to_steps(x.float(), self.T, self.nc).unsqueeze(-1)

    def bc_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.mat_out(x) if x.dim() == 4 else from_steps(x.squeeze(-1), self.L)

    def state_out(self, x: torch.Tensor) -> torch.Tensor:
        """(b, G, N, dg) -> (b, d, N)."""
        return x.transpose(-1, -2).reshape(self.b, self.d, self.N)

    def state_in(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d, N) -> (b, G, N, dg), in fp32."""
        return x.float().reshape(self.b, self.G, self.dg, self.N).transpose(-1, -2)


# The step dimension of sequences and blocks in the step layout (see StepLayout).
STEP = 3


def blocks(T: int, k: int) -> list[tuple[int, int]]:
    return [(j0, min(j0 + k, T)) for j0 in range(0, T, k)]


def steps(x: torch.Tensor, j0: int, j1: int) -> torch.Tensor:
    """The steps [j0, j1) of a sequence in step layout (a view)."""
    return x.narrow(STEP, j0, j1 - j0)


def bc_block(x: torch.Tensor, j0: int, j1: int) -> torch.Tensor:
    """B or C for steps [j0, j1): fixed (G, 1, N, dg) as is, grouped (b, nc, G, T, N, 1) sliced."""
    return x if x.dim() == 4 else steps(x, j0, j1)

