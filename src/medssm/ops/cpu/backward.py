"""Numba kernel file: the "cpu" selective scan's backward kernel.

The forward keeps only the state every SEGMENT steps; the backward works a segment at a time, last to first.
Per segment and block it loads the inputs and the output gradient (and applies the gate's gradient), then
``segment_adjoint`` recomputes two states at a time from their checkpoint, runs their adjoint recurrences
lambda_t = gy_t C_t + a_{t+1} lambda_{t+1} back through the segment and sums B's and C's gradients over the
block's lanes; last come the per-step gradients of u and delta. Nothing of size (batch, d, L, N) is stored.

The segment's buffers are slots of one array (``_N_SLOTS`` x ``_SLOT_ROWS`` x width). ``segment_adjoint`` is
one long function on purpose (see its docstring): its steps are written out for LLVM to vectorise.
"""

from __future__ import annotations

import numpy as np

from .chunks import block_params, load_chunk, load_steps, store_steps
from .simd import (
    ONE,
    ZERO,
    add_row_product_sums,
    add_row_sums,
    add_tile_row_product_sums,
    add_tile_row_sums,
    exp,
    njit_inline,
    njit_kernel,
    prefetch_rows,
    sigmoid,
    store_fence,
)
from .sizes import LANES, PREFETCH_AHEAD, SEGMENT, TILE

# The segment's buffers are slots of one (_N_SLOTS, _SLOT_ROWS, width) array: loaded inputs and per-step terms
# (_U: u, _DL: delta after bias and softplus, _DU: dl u, _Y: y, _SG: softplus', _Z: z then dz, _GY: dL/dy,
# _DDL: dL/d delta, _SB: sum_n lambda B then dL/du) and each state of a pair's scratch rows (_ES: exps;
# _HS: states; _LAM: adjoints times dl u; _ES1, _HS1, _LAM1 for the second state).
# Rows per slot: SEGMENT + 1 are used (_HS keeps the state before the segment too); the padding sets how far
# apart the slots lie modulo 4 KiB: with none, slot s + k row j - k matched slot s row j there, and the
# adjoint's loads waited on its stores to other slots (4K aliasing).
_SLOT_ROWS = SEGMENT + 5
_U, _DL, _DU, _Y, _SG, _Z, _GY, _DDL, _SB, _ES, _HS, _LAM, _ES1, _HS1, _LAM1 = range(15)
_N_SLOTS = 15
assert (_HS1, _LAM1) == (_HS + 3, _LAM + 3)  # a pair's second state's slots: the B/C sums
# rows of the backward's per-state array: A, fixed B and C, mu, dA of a pair's first and second state
_PA, _PB, _PC, _PMU, _PDA, _PA1, _PB1, _PC1, _PMU1, _PDA1 = range(10)


@njit_inline
def _flat5(a, i0, i1, i2, i3, i4):
    """Flat element offset of a[i0, i1, i2, i3, i4] in a C-contiguous 5-D array."""
    return (((i0 * a.shape[1] + i1) * a.shape[2] + i2) * a.shape[3] + i3) * a.shape[4] + i4


def _segment_backward(selective: bool):
    """The backward's work on one segment (below); with ``selective`` compiled for selective B and C only, as
    forward.py's chunk recurrence, which measured faster."""

    @njit_inline
    def segment_adjoint(wk, par, mu, dA_acc, dBf_acc, dCf_acc, ckpt, seg_i, tn, t0, tid, bi, c0, nl, gb, gc, Bsel, Csel,
                         a_blk, b_blk, c_blk, dBsel_part, dCsel_part, lanes):
        """The backward through one segment (tn <= SEGMENT steps from t0) of a block's states, two states n, n + 1
        at a time so that their rows stay in cache; wk holds the segment's loaded inputs and the states' scratch
        rows (slots _U ... _LAM1):

        1. recompute both states from their checkpoints as the forward's recur_y does, keeping wk[_HS] and
           wk[_HS1] (row 0: the state before the segment, row j + 1: after step j) and wk[_ES][j] = a_j =
           exp(dl_j A_n) (and _ES1);
        2. run both adjoints backwards, lambda_j = gy_j C_j + a_{j+1} lambda_{j+1}, with mu[n] = a_{j+1} lambda_{j+1}
           carried in and out, keeping wk[_LAM][j] = lambda_j dl_j u_j and accumulating
           ddl[j] += lambda a_j h_{j-1} A_n, sb[j] += lambda B_j and dA[n] += lambda a_j h_{j-1} dl_j (4 steps per
           pass, mu in a register). Two states per pass: each adjoint is a chain of dependent multiply-adds, and
           two of them in one loop overlap their latencies and share the loads of gy, dl u, dl and the updates of
           ddl and sb (faster than one state at a time);
        3. sum B's and C's gradients, lambda dl u (which the adjoint leaves in wk[_LAM]) and gy h (products of
           the rows wk[_GY] and wk[_HS]), over the block's channels (lanes): add_row_sums and
           add_row_product_sums per 16-step tile (faster than a horizontal sum per step and state), multiplying
           gy h inside the sums (storing the products from the adjoint loop stopped LLVM vectorising it).

        The lane loops touch two arrays: wk, whose rows lie at constant distances from each other, and par (10,
        lanes), the two states' A, fixed B and C, carried mu and dA. With a buffer per quantity, LLVM guarded each
        lane loop with run-time alias checks between every pair (~12% of the backward's samples); with par's
        rows in wk too it stopped vectorising the loops (a 4x slower backward). One function rather than
        helpers called per state: every call of an inlined helper costs an atomic reference-count increment and
        decrement per array argument (a quarter of the time when the three passes were helpers called per
        state)."""
        d_state = mu.shape[0]
        width = wk.shape[2]  # LANES or TILE: a constant once inlined into the kernel for that width
        has_bsel = selective or Bsel.shape[0] > 0
        has_csel = selective or Csel.shape[0] > 0
        n_blocks = tn // 4
        for n in range(0, d_state, 2):
            # states n and n1 = n + 1; with N odd the last pair's second state is a copy of n with B, C, its
            # checkpoint and mu scaled by live1 = 0: it stays zero and contributes nothing, and is not written
            n1 = min(n + 1, d_state - 1)
            live1 = ONE if n + 1 < d_state else ZERO
            for lane in range(lanes):
                par[_PA, lane] = a_blk[n, lane]
                par[_PB, lane] = b_blk[n, lane]
                par[_PC, lane] = c_blk[n, lane]
                par[_PMU, lane] = mu[n, lane]
                par[_PDA, lane] = ZERO
                par[_PA1, lane] = a_blk[n1, lane]
                par[_PB1, lane] = b_blk[n1, lane] * live1
                par[_PC1, lane] = c_blk[n1, lane] * live1
                par[_PMU1, lane] = mu[n1, lane] * live1
                par[_PDA1, lane] = ZERO
            for lane in range(nl):  # lanes >= nl hold zeros
                # an unsigned index: numba wraps negative signed indices, and with that select per lane LLVM
                # turned this row copy into a vector gather (13% of a one-thread backward's samples)
                wk[_HS, 0, lane] = ckpt[bi, seg_i, n, np.uint64(c0 + lane)]
                wk[_HS1, 0, lane] = ckpt[bi, seg_i, n1, np.uint64(c0 + lane)] * live1
            # 1. both states forward through the segment, 4 steps per pass
            for jb in range(n_blocks):
                j = jb * 4
                b00 = Bsel[bi, gb, n, t0 + j] if has_bsel else ONE
                b01 = Bsel[bi, gb, n, t0 + j + 1] if has_bsel else ONE
                b02 = Bsel[bi, gb, n, t0 + j + 2] if has_bsel else ONE
                b03 = Bsel[bi, gb, n, t0 + j + 3] if has_bsel else ONE
                b10 = Bsel[bi, gb, n1, t0 + j] * live1 if has_bsel else ONE
                b11 = Bsel[bi, gb, n1, t0 + j + 1] * live1 if has_bsel else ONE
                b12 = Bsel[bi, gb, n1, t0 + j + 2] * live1 if has_bsel else ONE
                b13 = Bsel[bi, gb, n1, t0 + j + 3] * live1 if has_bsel else ONE
                for lane in range(lanes):
                    a0 = par[_PA, lane]
                    a1 = par[_PA1, lane]
                    bn0 = ONE if selective else par[_PB, lane]
                    bn1 = ONE if selective else par[_PB1, lane]
                    h0 = wk[_HS, j, lane]
                    h1 = wk[_HS1, j, lane]
                    dl = wk[_DL, j, lane]
                    du = wk[_DU, j, lane]
                    e = exp(dl * a0)
                    wk[_ES, j, lane] = e
                    h0 = e * h0 + du * (b00 * bn0)
                    wk[_HS, j + 1, lane] = h0
                    e = exp(dl * a1)
                    wk[_ES1, j, lane] = e
                    h1 = e * h1 + du * (b10 * bn1)
                    wk[_HS1, j + 1, lane] = h1
                    dl = wk[_DL, j + 1, lane]
                    du = wk[_DU, j + 1, lane]
                    e = exp(dl * a0)
                    wk[_ES, j + 1, lane] = e
                    h0 = e * h0 + du * (b01 * bn0)
                    wk[_HS, j + 2, lane] = h0
                    e = exp(dl * a1)
                    wk[_ES1, j + 1, lane] = e
                    h1 = e * h1 + du * (b11 * bn1)
                    wk[_HS1, j + 2, lane] = h1
                    dl = wk[_DL, j + 2, lane]
                    du = wk[_DU, j + 2, lane]
                    e = exp(dl * a0)
                    wk[_ES, j + 2, lane] = e
                    h0 = e * h0 + du * (b02 * bn0)
                    wk[_HS, j + 3, lane] = h0
                    e = exp(dl * a1)
                    wk[_ES1, j + 2, lane] = e
                    h1 = e * h1 + du * (b12 * bn1)
                    wk[_HS1, j + 3, lane] = h1
                    dl = wk[_DL, j + 3, lane]
                    du = wk[_DU, j + 3, lane]
                    e = exp(dl * a0)
                    wk[_ES, j + 3, lane] = e
                    h0 = e * h0 + du * (b03 * bn0)
                    wk[_HS, j + 4, lane] = h0
                    e = exp(dl * a1)
                    wk[_ES1, j + 3, lane] = e
                    h1 = e * h1 + du * (b13 * bn1)
                    wk[_HS1, j + 4, lane] = h1
            for j in range(n_blocks * 4, tn):
                bs0 = Bsel[bi, gb, n, t0 + j] if has_bsel else ONE
                bs1 = Bsel[bi, gb, n1, t0 + j] * live1 if has_bsel else ONE
                for lane in range(lanes):
                    a0 = par[_PA, lane]
                    a1 = par[_PA1, lane]
                    bn0 = ONE if selective else par[_PB, lane]
                    bn1 = ONE if selective else par[_PB1, lane]
                    dl = wk[_DL, j, lane]
                    du = wk[_DU, j, lane]
                    e = exp(dl * a0)
                    wk[_ES, j, lane] = e
                    wk[_HS, j + 1, lane] = e * wk[_HS, j, lane] + du * (bs0 * bn0)
                    e = exp(dl * a1)
                    wk[_ES1, j, lane] = e
                    wk[_HS1, j + 1, lane] = e * wk[_HS1, j, lane] + du * (bs1 * bn1)
            # 2. both adjoints backwards: the steps past the last whole block first, then 4 steps per pass
            # (written out, as in the forward's recur_y: a step loop or a helper per step kept LLVM from vectorising)
            for jr in range(tn - n_blocks * 4):
                j = tn - 1 - jr
                bs0 = Bsel[bi, gb, n, t0 + j] if has_bsel else ONE
                bs1 = Bsel[bi, gb, n1, t0 + j] * live1 if has_bsel else ONE
                qs0 = Csel[bi, gc, n, t0 + j] if has_csel else ONE
                qs1 = Csel[bi, gc, n1, t0 + j] * live1 if has_csel else ONE
                for lane in range(lanes):
                    a0 = par[_PA, lane]
                    a1 = par[_PA1, lane]
                    bn0 = ONE if selective else par[_PB, lane]
                    bn1 = ONE if selective else par[_PB1, lane]
                    cn0 = ONE if selective else par[_PC, lane]
                    cn1 = ONE if selective else par[_PC1, lane]
                    m0 = par[_PMU, lane]
                    m1 = par[_PMU1, lane]
                    da0 = ZERO
                    da1 = ZERO
                    g = wk[_GY, j, lane]
                    lv0 = g * (qs0 * cn0) + m0
                    lv1 = g * (qs1 * cn1) + m1
                    m0 = wk[_ES, j, lane] * lv0
                    m1 = wk[_ES1, j, lane] * lv1
                    du = wk[_DU, j, lane]
                    wk[_LAM, j, lane] = lv0 * du
                    wk[_LAM1, j, lane] = lv1 * du
                    la0 = m0 * wk[_HS, j, lane]
                    la1 = m1 * wk[_HS1, j, lane]
                    wk[_DDL, j, lane] += la0 * a0 + la1 * a1
                    wk[_SB, j, lane] += lv0 * (bs0 * bn0) + lv1 * (bs1 * bn1)
                    dl = wk[_DL, j, lane]
                    da0 += la0 * dl
                    da1 += la1 * dl
                    par[_PMU, lane] = m0
                    par[_PMU1, lane] = m1
                    par[_PDA, lane] += da0
                    par[_PDA1, lane] += da1
            for jb in range(n_blocks):
                j = (n_blocks - 1 - jb) * 4
                b00 = Bsel[bi, gb, n, t0 + j] if has_bsel else ONE
                b01 = Bsel[bi, gb, n, t0 + j + 1] if has_bsel else ONE
                b02 = Bsel[bi, gb, n, t0 + j + 2] if has_bsel else ONE
                b03 = Bsel[bi, gb, n, t0 + j + 3] if has_bsel else ONE
                b10 = Bsel[bi, gb, n1, t0 + j] * live1 if has_bsel else ONE
                b11 = Bsel[bi, gb, n1, t0 + j + 1] * live1 if has_bsel else ONE
                b12 = Bsel[bi, gb, n1, t0 + j + 2] * live1 if has_bsel else ONE
                b13 = Bsel[bi, gb, n1, t0 + j + 3] * live1 if has_bsel else ONE
                q00 = Csel[bi, gc, n, t0 + j] if has_csel else ONE
                q01 = Csel[bi, gc, n, t0 + j + 1] if has_csel else ONE
                q02 = Csel[bi, gc, n, t0 + j + 2] if has_csel else ONE
                q03 = Csel[bi, gc, n, t0 + j + 3] if has_csel else ONE
                q10 = Csel[bi, gc, n1, t0 + j] * live1 if has_csel else ONE
                q11 = Csel[bi, gc, n1, t0 + j + 1] * live1 if has_csel else ONE
                q12 = Csel[bi, gc, n1, t0 + j + 2] * live1 if has_csel else ONE
                q13 = Csel[bi, gc, n1, t0 + j + 3] * live1 if has_csel else ONE
                for lane in range(lanes):
                    a0 = par[_PA, lane]
                    a1 = par[_PA1, lane]
                    bn0 = ONE if selective else par[_PB, lane]
                    bn1 = ONE if selective else par[_PB1, lane]
                    cn0 = ONE if selective else par[_PC, lane]
                    cn1 = ONE if selective else par[_PC1, lane]
                    m0 = par[_PMU, lane]
                    m1 = par[_PMU1, lane]
                    da0 = ZERO
                    da1 = ZERO
                    g = wk[_GY, j + 3, lane]
                    lv0 = g * (q03 * cn0) + m0
                    lv1 = g * (q13 * cn1) + m1
                    m0 = wk[_ES, j + 3, lane] * lv0
                    m1 = wk[_ES1, j + 3, lane] * lv1
                    du = wk[_DU, j + 3, lane]
                    wk[_LAM, j + 3, lane] = lv0 * du
                    wk[_LAM1, j + 3, lane] = lv1 * du
                    la0 = m0 * wk[_HS, j + 3, lane]
                    la1 = m1 * wk[_HS1, j + 3, lane]
                    wk[_DDL, j + 3, lane] += la0 * a0 + la1 * a1
                    wk[_SB, j + 3, lane] += lv0 * (b03 * bn0) + lv1 * (b13 * bn1)
                    dl = wk[_DL, j + 3, lane]
                    da0 += la0 * dl
                    da1 += la1 * dl
                    g = wk[_GY, j + 2, lane]
                    lv0 = g * (q02 * cn0) + m0
                    lv1 = g * (q12 * cn1) + m1
                    m0 = wk[_ES, j + 2, lane] * lv0
                    m1 = wk[_ES1, j + 2, lane] * lv1
                    du = wk[_DU, j + 2, lane]
                    wk[_LAM, j + 2, lane] = lv0 * du
                    wk[_LAM1, j + 2, lane] = lv1 * du
                    la0 = m0 * wk[_HS, j + 2, lane]
                    la1 = m1 * wk[_HS1, j + 2, lane]
                    wk[_DDL, j + 2, lane] += la0 * a0 + la1 * a1
                    wk[_SB, j + 2, lane] += lv0 * (b02 * bn0) + lv1 * (b12 * bn1)
                    dl = wk[_DL, j + 2, lane]
                    da0 += la0 * dl
                    da1 += la1 * dl
                    g = wk[_GY, j + 1, lane]
                    lv0 = g * (q01 * cn0) + m0
                    lv1 = g * (q11 * cn1) + m1
                    m0 = wk[_ES, j + 1, lane] * lv0
                    m1 = wk[_ES1, j + 1, lane] * lv1
                    du = wk[_DU, j + 1, lane]
                    wk[_LAM, j + 1, lane] = lv0 * du
                    wk[_LAM1, j + 1, lane] = lv1 * du
                    la0 = m0 * wk[_HS, j + 1, lane]
                    la1 = m1 * wk[_HS1, j + 1, lane]
                    wk[_DDL, j + 1, lane] += la0 * a0 + la1 * a1
                    wk[_SB, j + 1, lane] += lv0 * (b01 * bn0) + lv1 * (b11 * bn1)
                    dl = wk[_DL, j + 1, lane]
                    da0 += la0 * dl
                    da1 += la1 * dl
                    g = wk[_GY, j, lane]
                    lv0 = g * (q00 * cn0) + m0
                    lv1 = g * (q10 * cn1) + m1
                    m0 = wk[_ES, j, lane] * lv0
                    m1 = wk[_ES1, j, lane] * lv1
                    du = wk[_DU, j, lane]
                    wk[_LAM, j, lane] = lv0 * du
                    wk[_LAM1, j, lane] = lv1 * du
                    la0 = m0 * wk[_HS, j, lane]
                    la1 = m1 * wk[_HS1, j, lane]
                    wk[_DDL, j, lane] += la0 * a0 + la1 * a1
                    wk[_SB, j, lane] += lv0 * (b00 * bn0) + lv1 * (b10 * bn1)
                    dl = wk[_DL, j, lane]
                    da0 += la0 * dl
                    da1 += la1 * dl
                    par[_PMU, lane] = m0
                    par[_PMU1, lane] = m1
                    par[_PDA, lane] += da0
                    par[_PDA1, lane] += da1
            for lane in range(lanes):
                mu[n, lane] = par[_PMU, lane]
                dA_acc[n, lane] += par[_PDA, lane]
            if n + 1 < d_state:
                for lane in range(lanes):
                    mu[n1, lane] = par[_PMU1, lane]
                    dA_acc[n1, lane] += par[_PDA1, lane]
            # 3. B's and C's gradients: sums over the block's lanes of lambda dl u (in wk[_LAM]) and gy h
            for k in range(min(2, d_state - n)):
                nk = n + k
                lam_slot, hs_slot = _LAM + 3 * k, _HS + 3 * k  # the state's own slots (_LAM1 = _LAM + 3, ...)
                tiled = tn // TILE * TILE
                for j0 in range(0, tiled, TILE):
                    lam_at = (lam_slot * _SLOT_ROWS + j0) * width
                    gy_at = (_GY * _SLOT_ROWS + j0) * width
                    hs_at = (hs_slot * _SLOT_ROWS + j0) * width
                    if has_bsel and width == LANES:
                        add_row_sums(wk, lam_at, width, dBsel_part, _flat5(dBsel_part, tid, bi, gb, nk, t0 + j0))
                    elif has_bsel:
                        add_tile_row_sums(wk, lam_at, width, dBsel_part, _flat5(dBsel_part, tid, bi, gb, nk, t0 + j0))
                    if has_csel and width == LANES:
                        add_row_product_sums(wk, gy_at, hs_at + width, width, dCsel_part,
                                              _flat5(dCsel_part, tid, bi, gc, nk, t0 + j0))
                    elif has_csel:
                        add_tile_row_product_sums(wk, gy_at, hs_at + width, width, dCsel_part,
                                                   _flat5(dCsel_part, tid, bi, gc, nk, t0 + j0))
                for j in range(tiled, tn):
                    if has_bsel:
                        acc_b = ZERO
                        for lane in range(lanes):
                            acc_b += wk[lam_slot, j, lane]
                        dBsel_part[tid, bi, gb, nk, t0 + j] += acc_b
                    if has_csel:
                        acc_c = ZERO
                        for lane in range(lanes):
                            acc_c += wk[_GY, j, lane] * wk[hs_slot, j + 1, lane]
                        dCsel_part[tid, bi, gc, nk, t0 + j] += acc_c
                if not has_bsel:
                    for j in range(tn):
                        for lane in range(lanes):
                            dBf_acc[nk, lane] += wk[lam_slot, j, lane]
                if not has_csel:
                    for j in range(tn):
                        for lane in range(lanes):
                            dCf_acc[nk, lane] += wk[_GY, j, lane] * wk[hs_slot, j + 1, lane]

    return segment_adjoint


_segment_adjoint = _segment_backward(selective=False)
_segment_adjoint_selective = _segment_backward(selective=True)


def _backward_kernel(width: int):
    """The backward kernel for blocks of ``width`` channels, LANES or TILE (see workers.block_width): its buffers'
    rows are ``width`` floats, a constant of each compiled kernel, as in forward_kernel."""

    @njit_kernel
    def scan_bwd(job_lo, job_hi, tid, u, delta, bias, softplus, A, Bsel, Bfix, Csel, Cfix, D, z, strides, gout, glast,
                 ckpt, y_saved, job_b, job_c, job_n, chan_per_gb, chan_per_gc, lanes, seqlen, du_out, ddelta_out,
                 dz_out, dA_part, dD_part, dbias_part, dBsel_part, dBfix_part, dCsel_part, dCfix_part):
        """Backward scan for jobs [job_lo, job_hi) on worker ``tid``: gradients w.r.t. u, delta and z, and
        worker ``tid``'s partial sums for A (workers, d, N), D and delta_bias (workers, d), and B and C
        (workers, b, G, N, L) or (workers, d, N). Inputs as in forward_kernel, gout a 1-D view like them with
        strides[3]; du_out, ddelta_out, dz_out: 1-D, strides[4], [5], [6] (dz_out empty without z); glast: the last
        state's gradient (b, d, N) or empty; ckpt and y_saved: what the forward saved (see forward_kernel).

        Segments of SEGMENT steps (one checkpoint each) are processed last to first: load the segment, the
        gate's gradient, then _segment_adjoint (each state's recomputation from its checkpoint, adjoint and B/C
        gradient sums), then the per-step gradients of u and delta."""
        d_state = A.shape[1]
        has_z = z.shape[0] > 0
        n_segments = (seqlen + SEGMENT - 1) // SEGMENT
        selective = Bsel.shape[0] > 0 and Csel.shape[0] > 0
        # the segment's buffers as slots (_U, _DL, ...) of one array, _SLOT_ROWS rows each (see there)
        wk = np.empty((_N_SLOTS, _SLOT_ROWS, width), np.float32)
        par = np.empty((10, width), np.float32)
        mu = np.empty((d_state, width), np.float32)  # a_{t+1} * lambda_{t+1}, carried backwards
        dA_acc = np.empty((d_state, width), np.float32)
        dBf_acc = np.empty((d_state, width), np.float32)
        dCf_acc = np.empty((d_state, width), np.float32)
        dD_acc = np.empty(width, np.float32)
        dbias_acc = np.empty(width, np.float32)
        ub, dlb, dub, yb, sgb, zb = wk[_U], wk[_DL], wk[_DU], wk[_Y], wk[_SG], wk[_Z]
        gyb, ddl, sb = wk[_GY], wk[_DDL], wk[_SB]  # dL/dy before the gate; sb = sum_n lambda B (du = dl sb + D gy)
        for job in range(job_lo, job_hi):
            bi, c0, nl = job_b[job], job_c[job], job_n[job]
            gb = c0 // chan_per_gb
            gc = c0 // chan_per_gc
            a_blk, b_blk, c_blk, d_blk, bias_blk = block_params(A, Bfix, Cfix, D, bias, c0, nl, lanes)
            wk[:] = ZERO  # lanes >= nl must hold zeros
            if not softplus:
                sgb[:] = ONE  # delta + bias's derivative, multiplied in below as softplus's
            for buf in (mu, dA_acc, dBf_acc, dCf_acc):
                buf[:] = ZERO
            if glast.shape[0] > 0:  # the last state's gradient starts the adjoint: lambda_{L-1} += dL/dh_{L-1}
                for lane in range(nl):
                    for n in range(d_state):
                        mu[n, lane] = glast[bi, c0 + lane, n]
            dD_acc[:] = ZERO
            dbias_acc[:] = ZERO
            for sg_ in range(n_segments):
                seg_i = n_segments - 1 - sg_
                t0 = seg_i * SEGMENT
                tn = min(SEGMENT, seqlen - t0)
                # the next segment's checkpoint rows, one per state: each state's recomputation starts with a
                # load of its row, and when that misses the cache the state waits for it
                for n0 in range(0, d_state, TILE):
                    for l0 in range(0, nl, TILE):
                        prefetch_rows(ckpt, ((bi * n_segments + seg_i - 1) * d_state + n0) * ckpt.shape[3] + c0 + l0,
                                       ckpt.shape[3])
                load_chunk(u, delta, strides, softplus, bias_blk, d_blk, bi, c0, nl, t0, tn, lanes, ub, dlb, dub, yb,
                            sgb, -PREFETCH_AHEAD)
                load_steps(gout, strides, 3, bi, c0, nl, t0, tn, gyb, -PREFETCH_AHEAD)
                if has_z:  # the gate: gy = g silu(z), dz = g sg (1 + z (1 - sg)) y with the forward's y
                    load_steps(z, strides, 2, bi, c0, nl, t0, tn, zb, -PREFETCH_AHEAD)
                    load_steps(y_saved, strides, 7, bi, c0, nl, t0, tn, yb, -PREFETCH_AHEAD)
                    for j in range(tn):
                        for lane in range(lanes):
                            zv = zb[j, lane]
                            sg = sigmoid(zv)
                            g = gyb[j, lane]
                            zb[j, lane] = g * sg * (ONE + zv * (ONE - sg)) * yb[j, lane]  # dL/dz
                            gyb[j, lane] = g * zv * sg
                    store_steps(zb, dz_out, strides, 6, bi, c0, nl, t0, tn)
                for j in range(tn):
                    for lane in range(lanes):
                        dD_acc[lane] += gyb[j, lane] * ub[j, lane]
                        ddl[j, lane] = ZERO
                        sb[j, lane] = ZERO
                if selective:
                    _segment_adjoint_selective(wk, par, mu, dA_acc, dBf_acc, dCf_acc, ckpt, seg_i, tn, t0, tid, bi, c0,
                                               nl, gb, gc, Bsel, Csel, a_blk, b_blk, c_blk, dBsel_part, dCsel_part,
                                               lanes)
                else:
                    _segment_adjoint(wk, par, mu, dA_acc, dBf_acc, dCf_acc, ckpt, seg_i, tn, t0, tid, bi, c0, nl, gb,
                                     gc, Bsel, Csel, a_blk, b_blk, c_blk, dBsel_part, dCsel_part, lanes)
                for j in range(tn):
                    for lane in range(lanes):
                        g = (ddl[j, lane] + sb[j, lane] * ub[j, lane]) * sgb[j, lane]  # dL/d(delta + bias)
                        ddl[j, lane] = g
                        dbias_acc[lane] += g
                        sb[j, lane] = sb[j, lane] * dlb[j, lane] + d_blk[lane] * gyb[j, lane]  # now dL/du
                store_steps(sb, du_out, strides, 4, bi, c0, nl, t0, tn)
                store_steps(ddl, ddelta_out, strides, 5, bi, c0, nl, t0, tn)
            for lane in range(nl):
                dD_part[tid, c0 + lane] += dD_acc[lane]
                dbias_part[tid, c0 + lane] += dbias_acc[lane]
                for n in range(d_state):
                    dA_part[tid, c0 + lane, n] += dA_acc[n, lane]
                    if Bsel.shape[0] == 0:
                        dBfix_part[tid, c0 + lane, n] += dBf_acc[n, lane]
                    if Csel.shape[0] == 0:
                        dCfix_part[tid, c0 + lane, n] += dCf_acc[n, lane]
        store_fence()  # as in forward_kernel

    return scan_bwd


backward_kernels = {width: _backward_kernel(width) for width in (LANES, TILE)}  # each compiled on first use
