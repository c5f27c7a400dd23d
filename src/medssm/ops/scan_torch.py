"""The "torch" selective-scan backend: chunked pure PyTorch with a hand-written chunked backward.

Same semantics as :func:`medssm.ops.scan_reference.selective_scan_reference` (mamba_ssm's
``selective_scan_ref``), but fast, frugal with memory and numerically safe at any sequence length; it runs
on any device and can be traced (``torch.jit.trace``) and exported (``torch.export.export``).

Algorithm. The sequence, zero-padded to ``nc * T`` steps (padding has delta = 0, which leaves the state
unchanged), is cut into ``nc`` chunks of ``T`` steps, and all chunks are scanned *at the same time*: a
Python loop over the T positions updates one (batch, nc, G, N, d/G) "slab" per step, so each op touches
~b*d*N*L/T elements and the Python overhead is O(T) ops, not O(L).

1. Local pass: scan every chunk from a zero state; keep only the chunk-end states.
2. Carry pass: h_in[c+1] = exp(A * sum of delta over chunk c) * h_in[c] + h_end[c], a log-depth scan over
   chunks. Decays are only ever multiplied (each is exp of a non-positive number, so products can only
   underflow towards 0, the right answer). Nothing forms exp(A * (cumsum[t] - cumsum[s])) from a global
   cumsum: that difference loses all precision once L is large, and its pieces overflow, which is why
   VMamba's ``selective_scan_easy`` returns NaN on long chunks.
3. Output pass: rescan every chunk from its true initial state h_in[c] and form y_t = <h_t, C_t>.

Steps go in blocks of k: exp(delta * A) and delta * u * B are formed for a whole block at once, the
recurrence is one in-place ``addcmul_`` per step, and contractions over N are batched matmuls. Only a few
blocks (each ~b*d*N*L*k/T elements) are alive at a time; nothing of size b*d*L*N is ever allocated.

The backward mirrors this with the adjoint lambda_t = C_t g_t + a_{t+1} lambda_{t+1} (a_t = exp(delta_t A)):
one forward rescan from the chunk-start states keeps the state before every block (1/k of the volume,
alive only during the backward) and, with the same decays, each chunk's local adjoint seed; a reverse
carry pass over chunks gives the adjoint entering each chunk from the right; then per block, last first,
the states and the adjoint are recomputed and every gradient follows from lambda, h and a. Like
mamba_ssm's kernel, autograd keeps only the inputs themselves and the chunk-start states (b*d*N*L/T):
the D skip, the silu(z) gate and the delta bias/softplus live inside the autograd Function, so no
(b, d, L) intermediate is saved either.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Steps per block. Larger blocks mean fewer, larger ops (less Python overhead) but more memory: the
# backward keeps T/k checkpoint slabs (1/k of the b*d*L*N volume) plus a few blocks of k slabs.
_BLOCK = 8
# Default chunking off CPU: T ~ 2 sqrt(L), at least this.
_MIN_CHUNK = 256
# Default chunking on CPU: elements per step slab (b * nc * d * N), and the shortest chunk. Slabs of about
# 100 K floats (a block of k of them ~3 MB) were fastest at every benchmark shape on the 2-core machine
# (forward, chunk_size swept and interleaved in one process, 2026-11-23): (1, 192, 16, 1024) T = 64 vs
# 256: 3.9-4.1 vs 5.4-5.6 ms; (1, 192, 16, 4096) T = 128 vs 256: 11.5-11.7 vs 12.4 ms; (2, 384, 16, 4096)
# T = 512 vs 256: 42.9 vs 49.4 ms; (1, 96, 16, 16384) T = 192-256 best (22.8-23.2 ms).
_CPU_SLAB = 96 * 1024
_MIN_CPU_CHUNK = 32


def _plan(seqlen: int, chunk_size: int | None, d_state: int, slab: int | None = None) -> tuple[int, int]:
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
        chunk_size = max(_MIN_CPU_CHUNK, 4 * d_state, _BLOCK * -(-seqlen // (chunks * _BLOCK)))
    elif chunk_size is None:
        chunk_size = max(_MIN_CHUNK, _BLOCK * round(2 * math.sqrt(seqlen) / _BLOCK))
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


def _to_steps(x: torch.Tensor, T: int, nc: int) -> torch.Tensor:
    """(b, X, Y, L) -> (b, nc, X, T, Y), zero-padded to nc*T steps; step t = c*T + j lands at [:, c, :, j].

    Transposes (Y, L) -> (L, Y) first and then moves whole rows of Y: ~2x faster than one permuted copy
    on CPU, whose reads would stride by L for every element.
    """
    b, X, Y, L = x.shape
    xt = x.new_empty(b, X, nc * T, Y) if nc * T == L else x.new_zeros(b, X, nc * T, Y)
    _copy_transposed(xt[:, :, :L] if nc * T > L else xt, x)
    return xt.view(b, X, nc, T, Y).transpose(1, 2).contiguous()


def _from_steps(x: torch.Tensor, seqlen: int) -> torch.Tensor:
    """Inverse of :func:`_to_steps`: (b, nc, X, T, Y) -> (b, X, Y, seqlen), in the same two moves."""
    b, nc, X, T, Y = x.shape
    rows = x.transpose(1, 2).reshape(b, X, nc * T, Y)[:, :, :seqlen]
    return rows.transpose(-1, -2).contiguous()


class _Layout:
    """Converts between the public layouts and the step layout of the passes.

    Channels split as d = G * dg so that B/C group g covers channel block g. A slab (the states of one
    step of every chunk) is (b, nc, G, N, dg): channels innermost (contiguous, so elementwise ops
    vectorise), N next to them (so contractions over N are batched matmuls). Sequences keep the step
    within the chunk at dim 3 (``_STEP``), after the chunk: per-channel (b, nc, G, T, 1, dg), B/C
    (b, nc, G, T, N, 1); (d, N) matrices are (G, 1, N, dg) and (d,) vectors (G, 1, 1, dg).

    Chunks outermost, because torch splits an op between threads by its outermost dimension: then
    every op, whether it covers a block of steps or one step, gives each thread the same chunks, and
    no thread reads what another wrote. When the host puts the two vCPUs of the 2-core machine on
    different L3 caches (a cache line's round trip between them 370 ns rather than 90; it changes
    between runs), steps outermost made this backend's forward almost 2x slower (about 20.5 vs 11-13 ms at
    (1, 192, 16, 4096)), its broadcasting multiplications 4-5x.
    """

    def __init__(self, batch: int, dim: int, d_state: int, seqlen: int, groups: int, chunk_size: int | None,
                 cpu: bool):
        self.b, self.d, self.N, self.L, self.G = batch, dim, d_state, seqlen, groups
        self.dg = dim // groups
        self.T, self.nc = _plan(seqlen, chunk_size, d_state, batch * dim * d_state if cpu else None)

    def seq_in(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d, L) -> (b, nc, G, T, 1, dg), in fp32."""
        return _to_steps(x.float().reshape(self.b, self.G, self.dg, self.L), self.T, self.nc).unsqueeze(-2)

    def seq_out(self, x: torch.Tensor) -> torch.Tensor:
        """(b, nc, G, T, 1, dg) -> (b, d, L)."""
        return _from_steps(x.squeeze(-2), self.L).reshape(self.b, self.d, self.L)

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
        return self.mat_in(x) if x.dim() == 2 else _to_steps(x.float(), self.T, self.nc).unsqueeze(-1)

    def bc_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.mat_out(x) if x.dim() == 4 else _from_steps(x.squeeze(-1), self.L)

    def state_out(self, x: torch.Tensor) -> torch.Tensor:
        """(b, G, N, dg) -> (b, d, N)."""
        return x.transpose(-1, -2).reshape(self.b, self.d, self.N)

    def state_in(self, x: torch.Tensor) -> torch.Tensor:
        """(b, d, N) -> (b, G, N, dg), in fp32."""
        return x.float().reshape(self.b, self.G, self.dg, self.N).transpose(-1, -2)


# The step dimension of sequences and blocks in the step layout (see _Layout).
_STEP = 3


def _blocks(T: int, k: int) -> list[tuple[int, int]]:
    return [(j0, min(j0 + k, T)) for j0 in range(0, T, k)]


def _steps(x: torch.Tensor, j0: int, j1: int) -> torch.Tensor:
    """The steps [j0, j1) of a sequence in step layout (a view)."""
    return x.narrow(_STEP, j0, j1 - j0)


def _bc_block(x: torch.Tensor, j0: int, j1: int) -> torch.Tensor:
    """B or C for steps [j0, j1): fixed (G, 1, N, dg) as is, grouped (b, nc, G, T, N, 1) sliced."""
    return x if x.dim() == 4 else _steps(x, j0, j1)


def _sum_n(x: torch.Tensor) -> torch.Tensor:
    """Sum over the state dim N (dim -2, keepdim) as a matmul: torch's own sum over that middle dim of
    (..., N, dg) tensors was ~100x slower on CPU."""
    return torch.matmul(x.new_ones(1, x.shape[-2]), x)


def _base2(A_w: torch.Tensor) -> torch.Tensor:
    """A * log2(e), so that exp(delta * A) = exp2(delta * A * log2(e)): torch's CPU exp2 is ~3x faster
    than its exp (8.0 vs 2.4 G elements/s in-cache, torch 2.13 on the 2-core AVX-512 machine), and the
    decays are most of this backend's work. The extra rounding is of the order of fp32's own in exp."""
    return A_w * math.log2(math.e)


def _block_decays(delta_s: torch.Tensor, A2_w: torch.Tensor, j0: int, j1: int) -> torch.Tensor:
    """a_t = exp(delta_t * A) for the steps [j0, j1): (b, nc, G, k, N, dg), exponentiated in place;
    A2_w = :func:`_base2` (A)."""
    return torch.mul(_steps(delta_s, j0, j1), A2_w).exp2_()


def _chunk_decays(delta_s: torch.Tensor, A2_w: torch.Tensor) -> torch.Tensor:
    """exp(A * sum of delta over each chunk): (b, nc, G, N, dg). The sum is chunk-local, never global."""
    return torch.mul(delta_s.sum(_STEP), A2_w.squeeze(1)).exp2_()


def _chunk_carry(local: torch.Tensor, decay: torch.Tensor, init: torch.Tensor | None = None) -> torch.Tensor:
    """out[0] = init (or 0), out[c + 1] = decay[c] * out[c] + local[c]; local, decay (b, nc, ...).

    Returns (b, nc + 1, ...). A Hillis-Steele doubling scan: log2(nc) whole-tensor steps rather than nc
    tiny sequential ones; it only multiplies decays (see the module docstring).
    """
    if init is None:
        init = torch.zeros_like(local[:, 0])
    acc = torch.cat([init.unsqueeze(1), local], 1)
    dec = torch.cat([torch.ones_like(decay[:, :1]), decay], 1)  # dec[0] multiplies nothing
    shift = 1
    while shift < acc.shape[1]:
        acc = torch.cat([acc[:, :shift], torch.addcmul(acc[:, shift:], dec[:, shift:], acc[:, :-shift])], 1)
        dec = torch.cat([dec[:, :shift], dec[:, shift:] * dec[:, :-shift]], 1)
        shift *= 2
    return acc


def _recur_(x: torch.Tensor, a: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
    """In place along the steps: x_0 += a_0 * x0 (if given), then x_j += a_j * x_{j-1}; returns x.

    The states of a block from its inputs (x = delta u B). The steps are views from one ``unbind``: indexing
    x[j], a[j], x[j - 1] cost about 2.4 us of Python a step next to the ~5 us add, unbind about 1.3 (ad hoc,
    8-step blocks of a (1, 192, 16, 4096) scan).
    """
    xs, as_ = x.unbind(_STEP), a.unbind(_STEP)
    if x0 is not None:
        xs[0].addcmul_(as_[0], x0)
    for j in range(1, len(xs)):
        xs[j].addcmul_(as_[j], xs[j - 1])
    return x


def _scan_blocks(delta_s: torch.Tensor, u_s: torch.Tensor, A2_w: torch.Tensor, B_w: torch.Tensor,
                 h0: torch.Tensor | None, k: int, C_w: torch.Tensor | None = None,
                 y_s: torch.Tensor | None = None) -> torch.Tensor:
    """Scan all chunks at once from the states ``h0`` (None: zero) and return the chunk-end states.

    delta_s, u_s: (b, nc, G, T, 1, dg); A2_w: :func:`_base2` (A), (G, 1, N, dg); B_w, C_w: fixed
    (G, 1, N, dg) or (b, nc, G, T, N, 1); h0: (b, nc, G, N, dg). Optionally writes y = <h, C> into ``y_s``
    (b, nc, G, T, 1, dg).
    """
    h = h0
    for j0, j1 in _blocks(delta_s.shape[_STEP], k):
        a = _block_decays(delta_s, A2_w, j0, j1)  # (b, nc, G, k, N, dg)
        # delta * u * B, turned into the states in place. (delta * u per block rather than once for the
        # whole sequence: one (b, d, L) buffer less, same speed.)
        H = _recur_((_steps(delta_s, j0, j1) * _steps(u_s, j0, j1)) * _bc_block(B_w, j0, j1), a, h)
        del a
        if y_s is not None:
            # (no out= here: this also runs under jit.trace, where out= breaks on grad-requiring inputs)
            c = _bc_block(C_w, j0, j1)
            _steps(y_s, j0, j1).copy_(torch.matmul(c.transpose(-1, -2), H) if c.dim() == 6 else _sum_n(H * c))
        h = H.select(_STEP, -1)
    return h.clone()


def _adjoint_block(gy_s: torch.Tensor, C_w: torch.Tensor, a: torch.Tensor, rho: torch.Tensor | None,
                   j0: int, j1: int) -> torch.Tensor:
    """lambda_t for the steps [j0, j1) of every chunk, given rho = a_{j1} lambda_{j1} (None: zero) from
    after the block: lambda_t = C_t g_t + a_{t+1} lambda_{t+1}. Returns (b, nc, G, k, N, dg)."""
    lam = _steps(gy_s, j0, j1) * _bc_block(C_w, j0, j1)
    lams, as_ = lam.unbind(_STEP), a.unbind(_STEP)
    if rho is not None:
        lams[-1].add_(rho)
    for j in range(len(lams) - 2, -1, -1):
        lams[j].addcmul_(as_[j + 1], lams[j + 1])
    return lam


def _scan_forward(delta_s: torch.Tensor, u_s: torch.Tensor, A_w: torch.Tensor, B_w: torch.Tensor,
                  C_w: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three passes. Returns y_s (b, nc, G, T, 1, dg), the chunk-start states h_in (b, nc, G, N, dg)
    and the last state (b, G, N, dg)."""
    y_s = torch.empty_like(u_s)
    A2_w = _base2(A_w)
    if delta_s.shape[1] == 1:
        # One chunk (L <= T): nothing to carry, so a single pass from the zero state.
        last = _scan_blocks(delta_s, u_s, A2_w, B_w, None, k, C_w=C_w, y_s=y_s)
        return y_s, torch.zeros_like(last), last[:, 0]
    h_end = _scan_blocks(delta_s, u_s, A2_w, B_w, None, k)
    carry = _chunk_carry(h_end, _chunk_decays(delta_s, A2_w))
    del h_end
    h_in, last = carry[:, :-1], carry[:, -1]
    _scan_blocks(delta_s, u_s, A2_w, B_w, h_in, k, C_w=C_w, y_s=y_s)
    return y_s, h_in, last


def _scan_backward(delta_s: torch.Tensor, u_s: torch.Tensor, A_w: torch.Tensor, B_w: torch.Tensor,
                   C_w: torch.Tensor, h_in: torch.Tensor, gy_s: torch.Tensor, g_last: torch.Tensor | None,
                   k: int, gate: tuple[torch.Tensor, torch.Tensor | None] | None = None,
                   ) -> tuple[torch.Tensor, ...]:
    """Gradients of the scan in step layout: (du_s, ddelta_s, dA_w, dB_w, dC_w), given gy_s = dLoss/dy
    (b, nc, G, T, 1, dg) and g_last = dLoss/d(last state) (b, G, N, dg) or None.

    With W_t = lambda_t * a_t * h_{t-1}: dA = sum_t delta_t W_t, ddelta_t = sum_n (A W_t + lambda_t B_t u_t),
    du_t = delta_t sum_n lambda_t B_t, dB_t = lambda_t delta_t u_t and dC_t = g_t h_t, B and C summed over
    the channels (and, when fixed, the steps) that share them. ``gate`` = (g, Dskip): g (b, nc, G, T, 1, dg)
    is multiplied in place by y + Dskip * u, recomputed block by block (Dskip (G, 1, 1, dg) or None).
    """
    blocks = _blocks(u_s.shape[_STEP], k)
    A2_w = _base2(A_w)
    fixed_b, fixed_c = B_w.dim() == 4, C_w.dim() == 4
    several_chunks = delta_s.shape[1] > 1  # else no adjoint crosses a chunk boundary: skip kappa

    # Pass 1, in forward order: rescan the states from the chunk starts, keeping the state before each
    # block as a checkpoint (alive only during the backward) and y if asked, and, sharing the same decays,
    # each chunk's local adjoint seed kappa[c] = sum_j (a_0 ... a_j) C_j g_j: the adjoint that reaches
    # the previous chunk from inside chunk c (lambda_t = C_t g_t + a_{t+1} lambda_{t+1} unrolled).
    checkpoints: list[torch.Tensor] = []
    h, kappa, decay_so_far = h_in, None, None
    for j0, j1 in blocks:
        checkpoints.append(h if h._base is None else h.clone())  # a view would pin its whole block
        a = _block_decays(delta_s, A2_w, j0, j1)
        H = _recur_((_steps(delta_s, j0, j1) * _steps(u_s, j0, j1)) * _bc_block(B_w, j0, j1), a, h)
        if gate is not None:
            c = _bc_block(C_w, j0, j1)
            y = torch.matmul(c.transpose(-1, -2), H) if c.dim() == 6 else _sum_n(H * c)
            if gate[1] is not None:
                y.addcmul_(_steps(u_s, j0, j1), gate[1])
            _steps(gate[0], j0, j1).mul_(y)
            del y
        h = H.select(_STEP, -1)
        del H
        if not several_chunks:
            continue
        # Running products of decays in [0, 1] (they can only underflow), in a's buffer; step by step,
        # as torch.cumprod over dim 0 was several times slower on CPU.
        p, ps = a, a.unbind(_STEP)
        if decay_so_far is not None:
            ps[0].mul_(decay_so_far)
        for j in range(1, len(ps)):
            ps[j].mul_(ps[j - 1])
        decay_so_far = ps[-1].clone()
        part = p.mul_(_steps(gy_s, j0, j1)).mul_(_bc_block(C_w, j0, j1)).sum(_STEP)
        kappa = part if kappa is None else kappa.add_(part)
        del a, p
    del h  # a view into the last block
    # Pass 2: mu[c] = a_{t+1} lambda_{t+1} just after chunk c: the forward's carry run backwards over the
    # chunks; g_last enters after the last chunk (the padding steps are identities).
    if several_chunks:
        mu = _chunk_carry(kappa.flip(1), _chunk_decays(delta_s, A2_w).flip(1), g_last)[:, :-1].flip(1)
        del kappa
    else:
        mu = g_last.unsqueeze(1) if g_last is not None else None

    # Pass 3: per block, last first: states, adjoint, then every gradient from them.
    du_s = torch.empty_like(u_s)
    ddelta_s = torch.empty_like(delta_s)
    dA = torch.zeros_like(A_w)
    dB = torch.zeros_like(B_w) if fixed_b else torch.empty_like(B_w)
    dC = torch.zeros_like(C_w) if fixed_c else torch.empty_like(C_w)
    rho = mu
    for j0, j1 in reversed(blocks):
        h0 = checkpoints.pop()
        dl, g = _steps(delta_s, j0, j1), _steps(gy_s, j0, j1)
        dlu = dl * _steps(u_s, j0, j1)
        bb = _bc_block(B_w, j0, j1)
        a = _block_decays(delta_s, A2_w, j0, j1)
        H = _recur_(dlu * bb, a, h0)
        lam = _adjoint_block(gy_s, C_w, a, rho, j0, j1)
        rho = a.select(_STEP, 0) * lam.select(_STEP, 0)
        # W_t = lambda_t a_t h_{t-1}, built in a's buffer (a is not needed any more).
        w = a
        w.narrow(_STEP, 1, j1 - j0 - 1).mul_(H.narrow(_STEP, 0, j1 - j0 - 1))
        w.select(_STEP, 0).mul_(h0)
        w.mul_(lam)
        # Sums over every chunk and step of a block: (G, 1, N, dg) for fixed B, C and dA.
        if fixed_c:
            dC += (H * g).sum((0, 1, _STEP)).unsqueeze(1)
        else:
            _steps(dC, j0, j1).copy_(torch.matmul(H, g.transpose(-1, -2)))
        del H
        if fixed_b:
            dB += (lam * dlu).sum((0, 1, _STEP)).unsqueeze(1)
            lam_b = _sum_n(lam * bb)
        else:
            _steps(dB, j0, j1).copy_(torch.matmul(lam, dlu.transpose(-1, -2)))
            lam_b = torch.matmul(bb.transpose(-1, -2), lam)  # sum_n lambda B: (b, nc, G, k, 1, dg)
        del lam
        torch.mul(lam_b, dl, out=_steps(du_s, j0, j1))
        torch.addcmul(_sum_n(w * A_w), lam_b, _steps(u_s, j0, j1), out=_steps(ddelta_s, j0, j1))
        dA += w.mul_(dl).sum((0, 1, _STEP)).unsqueeze(1)
        del w, a
    return du_s, ddelta_s, dA, dB, dC


def _delta_steps(lay: _Layout, delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool,
             derivative: bool = False) -> torch.Tensor:
    """softplus(delta + delta_bias) (as asked) in step layout, or with ``derivative`` its derivative.

    Applied before padding so that padded steps keep delta = 0 (identity steps)."""
    x = delta.float()
    if delta_bias is not None:
        x = x + delta_bias.float()[:, None]
    if derivative:
        return lay.seq_in(torch.sigmoid(x))
    return lay.seq_in(F.softplus(x) if delta_softplus else x)


def _forward(lay: _Layout, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
             delta_softplus: bool, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward on the public layouts. Returns out (b, d, L) in u's dtype, the last state (b, d, N) fp32
    and the chunk-start states (for the backward)."""
    y_s, h_in, last = _scan_forward(_delta_steps(lay, delta, delta_bias, delta_softplus), lay.seq_in(u),
                                    lay.mat_in(A), lay.bc_in(B), lay.bc_in(C), k)
    # The D skip and the gate on the public layout: z then needs no conversion to the step layout.
    out = lay.seq_out(y_s)
    if D is not None:
        out = torch.addcmul(out, u.float(), D.float()[:, None])
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(u.dtype), lay.state_out(last), h_in


class _ScanFn(torch.autograd.Function):
    """The whole selective scan (bias/softplus, scan, D skip, gate) with a chunked hand-written backward.

    B and C come canonical: fp32, fixed (d, N) or grouped (b, G, N, L) with one G for both. Saves only its
    inputs and the chunk-start states (b*d*N*L/T); everything else is recomputed in the backward.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, lay, k):
        out, last, h_in = _forward(lay, u, delta, A, B, C, D, z, delta_bias, delta_softplus, k)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h_in)
        ctx.lay, ctx.k, ctx.delta_softplus = lay, k, delta_softplus
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable: say so if asked
    def backward(ctx, g_out, g_last):
        u, delta, A, B, C, D, z, delta_bias, h_in = ctx.saved_tensors
        lay: _Layout = ctx.lay
        u_s = lay.seq_in(u)
        if g_out is None:
            gy_s, g_gate = torch.zeros_like(u_s), None
        else:
            gy_s = lay.seq_in(g_out)
            g_gate = None
            if z is not None:
                z_s = lay.seq_in(z)
                sz = torch.sigmoid(z_s)
                # d out / d z = (y + D u) * silu'(z), silu'(z) = sz (1 + z (1 - sz)); y comes later.
                g_gate = gy_s * sz * (1 + z_s * (1 - sz))
                gy_s = gy_s * (z_s * sz)  # d loss / d (y + D u)
                del z_s, sz
        D_w = lay.vec_in(D) if D is not None else None
        du_s, ddelta_s, dA, dB, dC = _scan_backward(
            _delta_steps(lay, delta, delta_bias, ctx.delta_softplus), u_s, lay.mat_in(A), lay.bc_in(B),
            lay.bc_in(C), h_in, gy_s, lay.state_in(g_last) if g_last is not None else None, ctx.k,
            gate=(g_gate, D_w) if g_gate is not None else None)
        # Convert each gradient as soon as it is final, so that step and public copies don't pile up.
        dz = dD = d_bias = None
        if g_gate is not None:
            dz = lay.seq_out(g_gate).to(z.dtype)
        elif z is not None:
            dz = torch.zeros_like(z)
        del g_gate
        if D is not None:
            du_s.addcmul_(gy_s, D_w)
            dD = (gy_s * u_s).sum((0, 1, _STEP)).reshape(-1).to(D.dtype)
        del gy_s
        du = lay.seq_out(du_s).to(u.dtype)
        del du_s, u_s
        if ctx.delta_softplus:
            ddelta_s.mul_(_delta_steps(lay, delta, delta_bias, True, derivative=True))
        ddelta = lay.seq_out(ddelta_s)  # (drops the padded steps, whose gradients are meaningless)
        del ddelta_s
        if delta_bias is not None:
            d_bias = ddelta.sum((0, 2)).to(delta_bias.dtype)
        ddelta = ddelta.to(delta.dtype)
        return (du, ddelta, lay.mat_out(dA).to(A.dtype), lay.bc_out(dB), lay.bc_out(dC), dD, dz, d_bias,
                None, None, None)


def _canonical_bc(B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 B, C as fixed (d, N) or grouped (b, G, N, L) with one G for both (selective is G = 1; two
    different group counts are brought to their least common multiple, which divides d)."""
    B, C = B.float(), C.float()
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    groups = [x.shape[1] for x in (B, C) if x.dim() == 4]
    if len(groups) == 2 and groups[0] != groups[1]:
        G = math.lcm(*groups)
        B = B.repeat_interleave(G // B.shape[1], dim=1)
        C = C.repeat_interleave(G // C.shape[1], dim=1)
    return B, C


def selective_scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                         return_last_state: bool = False, chunk_size: int | None = None):
    """Selective scan in chunked pure PyTorch: any device, differentiable, traceable and exportable.

    Shapes and semantics as :func:`medssm.ops.selective_scan`: u, delta, z (batch, d, L); A (d, N);
    B, C (d, N), (batch, N, L) or (batch, G, N, L); D, delta_bias (d,). Returns out (batch, d, L) in u's
    dtype and, with ``return_last_state``, the final state (batch, d, N) in fp32. Gradients come back in
    each input's dtype.

    ``chunk_size`` trades Python overhead (O(chunk_size) ops) against the size of each op (default: on
    CPU, chunks of ~96 K / (b*d*N) elements per step, at least 32 and 4 N steps; elsewhere ~2 sqrt(L), at least
    256); it changes results only by rounding. Under ``torch.jit.trace`` the forward's
    plain tensor ops are recorded (an inference graph: ``jit.save``-able, not for training).
    """
    tracing = torch.jit.is_tracing()
    with warnings.catch_warnings() if tracing else contextlib.nullcontext():
        if tracing:
            # Python loops follow the shapes, so a trace is specialised to them (as documented): silence
            # the tracer's warning about every shape read.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
        Bc, Cc = _canonical_bc(B, C)
        batch, dim, seqlen = u.shape
        groups = Bc.shape[1] if Bc.dim() == 4 else Cc.shape[1] if Cc.dim() == 4 else 1
        lay = _Layout(batch, dim, A.shape[1], seqlen, groups, chunk_size, u.device.type == "cpu")
        if tracing:
            # The tracer would record the autograd.Function as an opaque Python op that cannot be saved,
            # so record the forward's plain ops instead.
            out, last, _ = _forward(lay, u, delta, A, Bc, Cc, D, z, delta_bias, delta_softplus, _BLOCK)
        else:
            out, last = _ScanFn.apply(u, delta, A, Bc, Cc, D, z, delta_bias, delta_softplus, lay, _BLOCK)
    return (out, last) if return_last_state else out
