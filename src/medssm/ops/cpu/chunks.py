"""Numba kernel file: moving a block's (time, lane) buffers in and out of (b, d, L) tensors.

The kernels work on a block of channels (lanes) of one batch element, a chunk of steps at a time, in
(time, lane) buffers. These helpers load a chunk of a sequence tensor into such a buffer and store one back,
whether the tensor's time axis is contiguous (the usual layout: 16x16 tiles transposed by shuffles) or its
channel axis (Mamba's transposed (b, L, d) tensors: rows copied as they are), and load a chunk of u and
delta with the per-step terms both passes need.
"""

from __future__ import annotations

import numpy as np

from .simd import (
    copy_tile,
    copy_tile_streaming,
    njit_inline,
    prefetch_rows,
    softplus,
    softplus_sigmoid,
    transpose_tile,
    transpose_tile_streaming,
)
from .sizes import TILE


@njit_inline
def load_lanes(src, at, s_c, s_t, nl, tn, dst, ahead, r0=0):
    """dst[j, lane] = src[at + lane * s_c + j * s_t] for lane < nl, j < tn (other entries untouched: lanes past
    nl stay zero). src is a 1-D view of a (b, d, L) tensor's memory, s_c and s_t its channel and time strides:
    time-contiguous (the usual layout) moves 16x16 tiles by shuffles, channel-contiguous (a transposed
    (b, L, d) tensor, as Mamba's z and delta are) copies each step's lanes as they are. Both prefetch the
    rows ``ahead`` steps on (see PREFETCH_AHEAD). With ``r0``, step j goes to dst row r0 + j instead."""
    tiled = nl // TILE * TILE if tn == TILE and (s_t == 1 or s_c == 1) else 0
    width = dst.shape[1]  # the buffer's row: LANES floats, or TILE in the backward's narrow blocks
    if s_t == 1:  # (a branch per tile inside one loop cost the forward 8%)
        for l0 in range(0, tiled, TILE):
            prefetch_rows(src, at + l0 * s_c + ahead, s_c)
            transpose_tile(src, at + l0 * s_c, s_c, dst, r0 * width + l0, width)
    else:
        for l0 in range(0, tiled, TILE):
            prefetch_rows(src, at + l0 + ahead * s_t, s_t)
            copy_tile(src, at + l0, s_t, dst, r0 * width + l0, width)
    for lane in range(tiled, nl):
        for j in range(tn):
            dst[r0 + j, lane] = src[at + lane * s_c + j * s_t]


@njit_inline
def store_lanes(src, dst, at, s_c, s_t, nl, tn, r0=0):
    """dst[at + lane * s_c + j * s_t] = src[r0 + j, lane] for lane < nl, j < tn: the inverse of load_lanes, into
    a 1-D view of an output that is time-contiguous (16x16 tiles transposed) or channel-contiguous (copied).

    Whole tiles go out with non-temporal stores when their rows are 64-byte aligned (in a (b, d, L) output
    whose rows and steps are multiples of 16 floats apart): the outputs are written once and not read back
    here, so reading each line in before overwriting it, as ordinary stores do, only cost time."""
    tiled = nl // TILE * TILE if tn == TILE and (s_t == 1 or s_c == 1) else 0
    streaming = (dst.ctypes.data + 4 * at) % 64 == 0 and (s_c if s_t == 1 else s_t) % TILE == 0
    width = src.shape[1]  # the buffer's row, as in load_lanes
    if s_t == 1 and streaming:
        for l0 in range(0, tiled, TILE):
            transpose_tile_streaming(src, r0 * width + l0, width, dst, at + l0 * s_c, s_c)
    elif s_t == 1:
        for l0 in range(0, tiled, TILE):
            transpose_tile(src, r0 * width + l0, width, dst, at + l0 * s_c, s_c)
    elif streaming:
        for l0 in range(0, tiled, TILE):
            copy_tile_streaming(src, r0 * width + l0, width, dst, at + l0, s_t)
    else:
        for l0 in range(0, tiled, TILE):
            copy_tile(src, r0 * width + l0, width, dst, at + l0, s_t)
    for lane in range(tiled, nl):
        for j in range(tn):
            dst[at + lane * s_c + j * s_t] = src[r0 + j, lane]


@njit_inline
def seq_at(strides, k, bi, c0, t0):
    """Flat offset of element (bi, c0, t0) of sequence tensor k, from its (b, d, L) element strides."""
    return bi * strides[k, 0] + c0 * strides[k, 1] + t0 * strides[k, 2]


@njit_inline
def load_steps(src, strides, k, bi, c0, nl, t0, tn, dst, ahead):
    """dst[j, lane] = sequence tensor k's element (bi, c0 + lane, t0 + j) for lane < nl, j < tn, by load_lanes
    on TILE steps at a time (the backward loads SEGMENT steps)."""
    for j0 in range(0, tn, TILE):
        load_lanes(src, seq_at(strides, k, bi, c0, t0 + j0), strides[k, 1], strides[k, 2], nl, min(TILE, tn - j0),
                    dst, ahead, j0)


@njit_inline
def store_steps(src, dst, strides, k, bi, c0, nl, t0, tn):
    """The inverse of load_steps: src[j, lane] into output k's element (bi, c0 + lane, t0 + j)."""
    for j0 in range(0, tn, TILE):
        store_lanes(src, dst, seq_at(strides, k, bi, c0, t0 + j0), strides[k, 1], strides[k, 2], nl,
                     min(TILE, tn - j0), j0)


@njit_inline
def block_params(A, Bfix, Cfix, D, bias, c0, nl, lanes):
    """Per-block parameters as (N, lanes): A, fixed B and C (ones when selective); (lanes,): D, bias."""
    d_state = A.shape[1]
    a_blk = np.zeros((d_state, lanes), np.float32)
    b_blk = np.ones((d_state, lanes), np.float32)
    c_blk = np.ones((d_state, lanes), np.float32)
    d_blk = np.zeros(lanes, np.float32)
    bias_blk = np.zeros(lanes, np.float32)
    for lane in range(nl):
        d_blk[lane] = D[c0 + lane]
        bias_blk[lane] = bias[c0 + lane]
        for n in range(d_state):
            a_blk[n, lane] = A[c0 + lane, n]
            if Bfix.shape[0] > 0:
                b_blk[n, lane] = Bfix[c0 + lane, n]
            if Cfix.shape[0] > 0:
                c_blk[n, lane] = Cfix[c0 + lane, n]
    return a_blk, b_blk, c_blk, d_blk, bias_blk


@njit_inline
def load_chunk(u, delta, strides, delta_softplus, bias_blk, d_blk, bi, c0, nl, t0, tn, lanes, ub, dlb, dub, yb,
               sgb, ahead):
    """Load one chunk of u and delta (sequence tensors 0 and 1 of ``strides``) into (time, lane) buffers and
    prepare per-step terms: dlb = softplus(delta + bias) (or delta + bias), sgb = softplus's derivative (with
    delta_softplus and only if sgb has rows: the backward's), dub = dlb * u, and yb = D * u (the skip term the scan
    adds to)."""
    if tn <= TILE:  # the forward's chunks: through load_steps' loop its forward measured 8% slower
        load_lanes(u, seq_at(strides, 0, bi, c0, t0), strides[0, 1], strides[0, 2], nl, tn, ub, ahead)
        load_lanes(delta, seq_at(strides, 1, bi, c0, t0), strides[1, 1], strides[1, 2], nl, tn, dlb, ahead)
    else:
        load_steps(u, strides, 0, bi, c0, nl, t0, tn, ub, ahead)
        load_steps(delta, strides, 1, bi, c0, nl, t0, tn, dlb, ahead)
    # separate branch-free loops: a condition inside the lane loop stopped LLVM from vectorising it (and adding
    # the bias inside softplus's loop measured slower)
    for j in range(tn):
        for lane in range(lanes):
            dlb[j, lane] += bias_blk[lane]
    if delta_softplus and sgb.shape[0] > 0:  # the backward: softplus and its derivative, from one exp
        for j in range(tn):
            for lane in range(lanes):
                dl, sg = softplus_sigmoid(dlb[j, lane])
                dlb[j, lane] = dl
                sgb[j, lane] = sg
    elif delta_softplus:
        for j in range(tn):
            for lane in range(lanes):
                dlb[j, lane] = softplus(dlb[j, lane])
    for j in range(tn):
        for lane in range(lanes):
            dub[j, lane] = dlb[j, lane] * ub[j, lane]
            yb[j, lane] = d_blk[lane] * ub[j, lane]

