"""Numba kernel file: the "cpu" selective scan's forward kernel and its chunk recurrence.

Each job is a block of channels (lanes) of one batch element. A chunk of CHUNK steps at a time, the kernel
loads u and delta into (time, lane) buffers, runs the recurrence state by state with the state in a
register for 4 steps per pass over the lanes, applies the gate and stores the output; with ``save_ckpt`` it
keeps the state every CKPT_EVERY chunks for the backward.
"""

from __future__ import annotations

import numpy as np

from .chunks import block_params, load_chunk, load_lanes, seq_at, store_lanes
from .simd import ONE, ZERO, exp, njit_inline, njit_kernel, sigmoid, store_fence
from .sizes import CHUNK, CKPT_EVERY, LANES, PREFETCH_AHEAD


def _chunk_recurrence(selective: bool):
    """The forward's chunk recurrence; with ``selective`` compiled for selective B and C only (no branch per
    B/C value, no multiply by the fixed parameters' ones, which measured faster)."""

    @njit_inline
    def recur_y(h, tn, t0, bi, gb, gc, Bsel, Csel, a_blk, b_blk, c_blk, dlb, dub, yb, lanes):
        """The recurrence over one chunk, h_j = exp(dl_j A) h_{j-1} + dl_j u_j B_j, and y_j += <h_j, C_j> into
        yb (which holds D * u); h (N, lanes) holds the state before the chunk and ends as the state after it.

        One state n at a time, 4 steps per pass over the lanes, so the state stays in a register for 4 steps
        (fewer measured slower, 8 no faster). The steps are written out: an inner step loop or an inline
        helper per step kept LLVM from vectorising the lane loop."""
        d_state = h.shape[0]
        has_bsel = selective or Bsel.shape[0] > 0
        has_csel = selective or Csel.shape[0] > 0
        for n in range(d_state):
            for jb in range(tn // 4):
                j = jb * 4
                b0 = Bsel[bi, gb, n, t0 + j] if has_bsel else ONE
                b1 = Bsel[bi, gb, n, t0 + j + 1] if has_bsel else ONE
                b2 = Bsel[bi, gb, n, t0 + j + 2] if has_bsel else ONE
                b3 = Bsel[bi, gb, n, t0 + j + 3] if has_bsel else ONE
                c0 = Csel[bi, gc, n, t0 + j] if has_csel else ONE
                c1 = Csel[bi, gc, n, t0 + j + 1] if has_csel else ONE
                c2 = Csel[bi, gc, n, t0 + j + 2] if has_csel else ONE
                c3 = Csel[bi, gc, n, t0 + j + 3] if has_csel else ONE
                for lane in range(lanes):
                    an = a_blk[n, lane]
                    bn = ONE if selective else b_blk[n, lane]
                    cn = ONE if selective else c_blk[n, lane]
                    hv = h[n, lane]
                    hv = exp(dlb[j, lane] * an) * hv + dub[j, lane] * (b0 * bn)
                    yb[j, lane] += hv * (c0 * cn)
                    hv = exp(dlb[j + 1, lane] * an) * hv + dub[j + 1, lane] * (b1 * bn)
                    yb[j + 1, lane] += hv * (c1 * cn)
                    hv = exp(dlb[j + 2, lane] * an) * hv + dub[j + 2, lane] * (b2 * bn)
                    yb[j + 2, lane] += hv * (c2 * cn)
                    hv = exp(dlb[j + 3, lane] * an) * hv + dub[j + 3, lane] * (b3 * bn)
                    yb[j + 3, lane] += hv * (c3 * cn)
                    h[n, lane] = hv
            for j in range(tn // 4 * 4, tn):
                bs = Bsel[bi, gb, n, t0 + j] if has_bsel else ONE
                cs = Csel[bi, gc, n, t0 + j] if has_csel else ONE
                for lane in range(lanes):
                    bn = ONE if selective else b_blk[n, lane]
                    cn = ONE if selective else c_blk[n, lane]
                    hv = exp(dlb[j, lane] * a_blk[n, lane]) * h[n, lane] + dub[j, lane] * (bs * bn)
                    h[n, lane] = hv
                    yb[j, lane] += hv * (cs * cn)

    return recur_y


_recur_y = _chunk_recurrence(selective=False)
_recur_y_selective = _chunk_recurrence(selective=True)


@njit_kernel
def forward_kernel(job_lo, job_hi, u, delta, bias, softplus, A, Bsel, Bfix, Csel, Cfix, D, z, strides, job_b,
                   job_c, job_n, chan_per_gb, chan_per_gc, lanes, seqlen, out, last_state, ckpt, save_ckpt, y_saved):
    """Forward scan for jobs [job_lo, job_hi). u, delta, z: 1-D views of (b, d, L) tensors' memory with
    element strides strides[0], [1], [2] (z empty when absent); out: 1-D, strides[4]; Bsel/Csel:
    (b, G, N, L), empty when fixed; Bfix/Cfix: (d, N), empty when selective; last_state: (b, d, N); ckpt:
    (b, segments, N, d), the state before every CKPT_EVERY chunks (channels last, so that the backward reads
    a block's lanes from one row); y_saved: 1-D, strides[7], the output before the gate (for dL/dz; empty
    when not needed)."""
    d_state = A.shape[1]
    has_z = z.shape[0] > 0
    n_chunks = (seqlen + CHUNK - 1) // CHUNK
    selective = Bsel.shape[0] > 0 and Csel.shape[0] > 0
    no_sig = np.zeros((0, lanes), np.float32)
    # buffers are allocated once per call and cleared per job; lanes >= nl must hold zeros. Their widths
    # are the constant LANES (not the lanes argument) so that LLVM sees constant row strides and can prove
    # that the rows the unrolled steps touch do not overlap
    h = np.empty((d_state, LANES), np.float32)  # the state
    dlb = np.empty((CHUNK, LANES), np.float32)
    ub = np.empty((CHUNK, LANES), np.float32)
    zb = np.empty((CHUNK, LANES), np.float32)
    yb = np.empty((CHUNK, LANES), np.float32)
    dub = np.empty((CHUNK, LANES), np.float32)
    for job in range(job_lo, job_hi):
        bi, c0, nl = job_b[job], job_c[job], job_n[job]
        gb = c0 // chan_per_gb
        gc = c0 // chan_per_gc
        a_blk, b_blk, c_blk, d_blk, bias_blk = block_params(A, Bfix, Cfix, D, bias, c0, nl, lanes)
        h[:] = ZERO
        for buf in (dlb, ub, zb):
            buf[:] = ZERO
        for k in range(n_chunks):
            t0 = k * CHUNK
            tn = min(CHUNK, seqlen - t0)
            if save_ckpt and k % CKPT_EVERY == 0:
                for n in range(d_state):
                    for lane in range(nl):
                        ckpt[bi, k // CKPT_EVERY, n, np.uint64(c0 + lane)] = h[n, lane]  # see backward.py
            load_chunk(u, delta, strides, softplus, bias_blk, d_blk, bi, c0, nl, t0, tn, lanes, ub, dlb, dub,
                       yb, no_sig, PREFETCH_AHEAD)
            if selective:
                _recur_y_selective(h, tn, t0, bi, gb, gc, Bsel, Csel, a_blk, b_blk, c_blk, dlb, dub, yb, lanes)
            else:
                _recur_y(h, tn, t0, bi, gb, gc, Bsel, Csel, a_blk, b_blk, c_blk, dlb, dub, yb, lanes)
            if y_saved.shape[0] > 0:
                store_lanes(yb, y_saved, seq_at(strides, 7, bi, c0, t0), strides[7, 1], strides[7, 2], nl, tn)
            if has_z:
                load_lanes(z, seq_at(strides, 2, bi, c0, t0), strides[2, 1], strides[2, 2], nl, tn, zb,
                           PREFETCH_AHEAD)
                for j in range(tn):
                    for lane in range(lanes):
                        zv = zb[j, lane]
                        yb[j, lane] *= zv * sigmoid(zv)
            store_lanes(yb, out, seq_at(strides, 4, bi, c0, t0), strides[4, 1], strides[4, 2], nl, tn)
        for lane in range(nl):
            for n in range(d_state):
                last_state[bi, c0 + lane, n] = h[n, lane]
    store_fence()  # the output's streaming stores are visible to other threads from here on
