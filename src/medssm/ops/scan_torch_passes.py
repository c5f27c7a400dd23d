"""The "torch" scan backend's passes over the step layout: the chunked forward and the hand-written backward.

All chunks are scanned at once, a block of k steps at a time (see ``scan_torch`` for the algorithm and
``scan_torch_layout`` for the layout). Decays are only ever multiplied, never formed from differences of
long cumulative sums, so nothing over- or underflows at any length.
"""

from __future__ import annotations

import math

import torch

from .scan_torch_layout import STEP, bc_block, blocks, steps


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
    return torch.mul(steps(delta_s, j0, j1), A2_w).exp2_()


def _chunk_decays(delta_s: torch.Tensor, A2_w: torch.Tensor) -> torch.Tensor:
    """exp(A * sum of delta over each chunk): (b, nc, G, N, dg). The sum is chunk-local, never global."""
    return torch.mul(delta_s.sum(STEP), A2_w.squeeze(1)).exp2_()


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
    xs, as_ = x.unbind(STEP), a.unbind(STEP)
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
    for j0, j1 in blocks(delta_s.shape[STEP], k):
        a = _block_decays(delta_s, A2_w, j0, j1)  # (b, nc, G, k, N, dg)
        # delta * u * B, turned into the states in place. (delta * u per block rather than once for the
        # whole sequence: one (b, d, L) buffer less, same speed.)
        H = _recur_((steps(delta_s, j0, j1) * steps(u_s, j0, j1)) * bc_block(B_w, j0, j1), a, h)
        del a
        if y_s is not None:
            # (no out= here: this also runs under jit.trace, where out= breaks on grad-requiring inputs)
            c = bc_block(C_w, j0, j1)
            steps(y_s, j0, j1).copy_(torch.matmul(c.transpose(-1, -2), H) if c.dim() == 6 else _sum_n(H * c))
        h = H.select(STEP, -1)
    return h.clone()


def _adjoint_block(gy_s: torch.Tensor, C_w: torch.Tensor, a: torch.Tensor, rho: torch.Tensor | None,
                   j0: int, j1: int) -> torch.Tensor:
    """lambda_t for the steps [j0, j1) of every chunk, given rho = a_{j1} lambda_{j1} (None: zero) from
    after the block: lambda_t = C_t g_t + a_{t+1} lambda_{t+1}. Returns (b, nc, G, k, N, dg)."""
    lam = steps(gy_s, j0, j1) * bc_block(C_w, j0, j1)
    lams, as_ = lam.unbind(STEP), a.unbind(STEP)
    if rho is not None:
        lams[-1].add_(rho)
    for j in range(len(lams) - 2, -1, -1):
        lams[j].addcmul_(as_[j + 1], lams[j + 1])
    return lam


def scan_forward(delta_s: torch.Tensor, u_s: torch.Tensor, A_w: torch.Tensor, B_w: torch.Tensor,
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


def scan_backward(delta_s: torch.Tensor, u_s: torch.Tensor, A_w: torch.Tensor, B_w: torch.Tensor,
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
    block_list = blocks(u_s.shape[STEP], k)
    A2_w = _base2(A_w)
    several_chunks = delta_s.shape[1] > 1  # else no adjoint crosses a chunk boundary: skip kappa
    checkpoints, kappa = _rescan(delta_s, u_s, A2_w, B_w, C_w, h_in, gy_s, block_list, gate, several_chunks)
    # Pass 2: mu[c] = a_{t+1} lambda_{t+1} just after chunk c: the forward's carry run backwards over the
    # chunks; g_last enters after the last chunk (the padding steps are identities).
    if several_chunks:
        mu = _chunk_carry(kappa.flip(1), _chunk_decays(delta_s, A2_w).flip(1), g_last)[:, :-1].flip(1)
        del kappa
    else:
        mu = g_last.unsqueeze(1) if g_last is not None else None
    return _block_gradients(delta_s, u_s, A_w, A2_w, B_w, C_w, gy_s, mu, checkpoints, block_list)


def _rescan(delta_s: torch.Tensor, u_s: torch.Tensor, A2_w: torch.Tensor, B_w: torch.Tensor, C_w: torch.Tensor,
            h_in: torch.Tensor, gy_s: torch.Tensor, block_list: list[tuple[int, int]],
            gate: tuple[torch.Tensor, torch.Tensor | None] | None, several_chunks: bool,
            ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """Pass 1 of :func:`scan_backward`, in forward order: rescan the states from the chunk starts, keeping the
    state before each block as a checkpoint (alive only during the backward) and applying the gate's y if
    asked, and, sharing the same decays, each chunk's local adjoint seed kappa[c] = sum_j (a_0 ... a_j) C_j g_j
    (b, nc, G, N, dg): the adjoint that reaches the previous chunk from inside chunk c (lambda_t = C_t g_t +
    a_{t+1} lambda_{t+1} unrolled); None with one chunk. Returns (checkpoints, kappa)."""
    checkpoints: list[torch.Tensor] = []
    h, kappa, decay_so_far = h_in, None, None
    for j0, j1 in block_list:
        checkpoints.append(h if h._base is None else h.clone())  # a view would pin its whole block
        a = _block_decays(delta_s, A2_w, j0, j1)
        H = _recur_((steps(delta_s, j0, j1) * steps(u_s, j0, j1)) * bc_block(B_w, j0, j1), a, h)
        if gate is not None:
            c = bc_block(C_w, j0, j1)
            y = torch.matmul(c.transpose(-1, -2), H) if c.dim() == 6 else _sum_n(H * c)
            if gate[1] is not None:
                y.addcmul_(steps(u_s, j0, j1), gate[1])
            steps(gate[0], j0, j1).mul_(y)
            del y
        h = H.select(STEP, -1)
        del H
        if not several_chunks:
            continue
        # Running products of decays in [0, 1] (they can only underflow), in a's buffer; step by step,
        # as torch.cumprod over dim 0 was several times slower on CPU.
        p, ps = a, a.unbind(STEP)
        if decay_so_far is not None:
            ps[0].mul_(decay_so_far)
        for j in range(1, len(ps)):
            ps[j].mul_(ps[j - 1])
        decay_so_far = ps[-1].clone()
        part = p.mul_(steps(gy_s, j0, j1)).mul_(bc_block(C_w, j0, j1)).sum(STEP)
        kappa = part if kappa is None else kappa.add_(part)
        del a, p
    return checkpoints, kappa


def _block_gradients(delta_s: torch.Tensor, u_s: torch.Tensor, A_w: torch.Tensor, A2_w: torch.Tensor,
                     B_w: torch.Tensor, C_w: torch.Tensor, gy_s: torch.Tensor, mu: torch.Tensor | None,
                     checkpoints: list[torch.Tensor], block_list: list[tuple[int, int]]) -> tuple[torch.Tensor, ...]:
    """Pass 3 of :func:`scan_backward`: per block, last first, the states (from ``checkpoints``, which it
    empties), the adjoint (entering each chunk from the right as ``mu``), then every gradient from them."""
    fixed_b, fixed_c = B_w.dim() == 4, C_w.dim() == 4
    du_s = torch.empty_like(u_s)
    ddelta_s = torch.empty_like(delta_s)
    dA = torch.zeros_like(A_w)
    dB = torch.zeros_like(B_w) if fixed_b else torch.empty_like(B_w)
    dC = torch.zeros_like(C_w) if fixed_c else torch.empty_like(C_w)
    rho = mu
    for j0, j1 in reversed(block_list):
        h0 = checkpoints.pop()
        dl, g = steps(delta_s, j0, j1), steps(gy_s, j0, j1)
        dlu = dl * steps(u_s, j0, j1)
        bb = bc_block(B_w, j0, j1)
        a = _block_decays(delta_s, A2_w, j0, j1)
        H = _recur_(dlu * bb, a, h0)
        lam = _adjoint_block(gy_s, C_w, a, rho, j0, j1)
        rho = a.select(STEP, 0) * lam.select(STEP, 0)
        # W_t = lambda_t a_t h_{t-1}, built in a's buffer (a is not needed any more).
        w = a
        w.narrow(STEP, 1, j1 - j0 - 1).mul_(H.narrow(STEP, 0, j1 - j0 - 1))
        w.select(STEP, 0).mul_(h0)
        w.mul_(lam)
        # Sums over every chunk and step of a block: (G, 1, N, dg) for fixed B, C and dA.
        if fixed_c:
            dC += (H * g).sum((0, 1, STEP)).unsqueeze(1)
        else:
            steps(dC, j0, j1).copy_(torch.matmul(H, g.transpose(-1, -2)))
        del H
        if fixed_b:
            dB += (lam * dlu).sum((0, 1, STEP)).unsqueeze(1)
            lam_b = _sum_n(lam * bb)
        else:
            steps(dB, j0, j1).copy_(torch.matmul(lam, dlu.transpose(-1, -2)))
            lam_b = torch.matmul(bb.transpose(-1, -2), lam)  # sum_n lambda B: (b, nc, G, k, 1, dg)
        del lam
        torch.mul(lam_b, dl, out=steps(du_s, j0, j1))
        torch.addcmul(_sum_n(w * A_w), lam_b, steps(u_s, j0, j1), out=steps(ddelta_s, j0, j1))
        dA += w.mul_(dl).sum((0, 1, STEP)).unsqueeze(1)
        del w, a
    return du_s, ddelta_s, dA, dB, dC

