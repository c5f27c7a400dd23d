"""The "cpu" selective-scan backend: fused multithreaded numba kernels for forward and backward.

Why it is laid out this way (see DESIGN.md, "Prior art for the scan"):

- The scan is bound by its batch*d*L*N exponentials. numba has no vector math library, so ``_exp`` is a
  polynomial exp (Cody-Waite range reduction, degree-6 Taylor, exponent built by a bit cast) that LLVM
  vectorises; relative error ~2e-7.
- SIMD lanes run across channels, not across the N states: a block of ``LANES`` channels of one batch
  element shares B_t and C_t (selective and grouped modes), so B/C are scalar broadcasts and every lane
  does the same work. Inputs are transposed per chunk of ``CHUNK`` time steps into (time, lane) buffers so
  that each thread's working set stays in L1/L2 (16x16 tiles at a time, by vector shuffles).
- Within a chunk the loops run state n outermost and 4 time steps per pass over the lanes, so a state
  (or, backwards, an adjoint) stays in a register for 4 steps instead of going through memory each step.
- Jobs (batch element, channel block) are split over Python threads running nogil kernels. Blocks are
  LANES channels, or TILE where the narrower blocks share the work among the threads clearly better; the
  backward is compiled once per width, so that its buffers' rows have a constant length. Lanes past the
  end of a block are padded with zeros (exp(0 * A) = 1 and zero input keep their state at zero).
- Forward keeps only the state every 64 steps when gradients are needed (batch, L/64, N, d); the
  backward recomputes each segment's states and decays from its checkpoint, two states at a time, then runs
  their adjoint recurrences lambda_t = gy_t C_t + a_{t+1} lambda_{t+1} backwards through the segment.
  Nothing of size (batch, d, L, N) is ever stored.
- Chunk loads prefetch the rows they will need a few chunks on (software prefetch: one stream per
  channel is more than the hardware prefetcher follows).
- Gradients of parameters shared across jobs (A, D, B, C) go to per-thread partial buffers summed after.

delta's bias and softplus are fused into the kernels (a vectorisable softplus), so the forward allocates
nothing of size (batch, d, L) besides its output. u, delta, z and the output gradient are read in place
when fp32 with their time or channel axis contiguous (Mamba's delta and z are transposed (b, L, d)
tensors); inputs in other dtypes or layouts are converted to contiguous fp32 first. Selective B and C are
read in their own (b, G, N, L) layout. The output follows u's layout, and the gradients of u, delta and z
their inputs' (channels last or contiguous), so that they reach the next op without a transposing copy.
"""

from __future__ import annotations

import functools
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ._numba_env import numba

# Channels per block. The lane loops take the width as a run-time argument on purpose: with a constant
# trip count LLVM unrolls them fully and then cannot vectorise them (the SLP vectoriser has no run-time
# alias checks); as ordinary loops the loop vectoriser handles them. 32 lanes fill its vector body
# (measured: the adjoint loop at 16 lanes ran 2.1x slower per channel than at 32).
LANES = 32
CHUNK = 16  # time steps per chunk: the unit of work, small enough for the buffers to stay in cache
TILE = 16  # chunk loads/stores move (TILE lanes x TILE steps) tiles with vector shuffles: one zmm per row
assert CHUNK == TILE and LANES % TILE == 0
# The forward keeps the state every CKPT_EVERY chunks (64 steps) for the backward, which works on the
# SEGMENT steps between two checkpoints at a time. Backward at (1, 192, 16, 4096), interleaved runs of the
# variants, ms: segments of 16 / 32 / 64 / 128 steps 11.8 / 13.6 / 10.6 / 11.4 on one thread; 32 / 64 / 128
# steps 7.0 / 6.6 / 6.0 on two; at (2, 384, 16, 4096) on two threads 64 steps 22.9, 128 steps 23.8, and at
# (1, 96, 16, 16384) 16.9 and 18.0. The checkpoints are N/64 the size of the output.
CKPT_EVERY = 4
# Chunk loads prefetch the same rows this many steps ahead (the backward, which walks back in time: behind).
# Time-contiguous inputs: a block's rows lie L floats apart, one stream per channel and input, more than the
# hardware prefetcher follows. One thread at (1, 192, 16, 4096), interleaved runs: forward 4.26 -> 3.78 ms,
# backward 15.2 -> 13.8 ms (2 and 8 chunks ahead measured the same as 4; prefetching the outputs' rows
# before the stores gained nothing). Channel-contiguous inputs (Mamba's): forward 3.87 -> 3.35 ms.
PREFETCH_AHEAD = 4 * CHUNK
# The backward works a segment (the steps between two checkpoints) at a time. Its buffers are slots of one
# (_N_SLOTS, _SLOT_ROWS, width) array: loaded inputs and per-step terms (_U: u, _DL: delta after bias and
# softplus, _DU: dl u, _Y: y, _SG: softplus', _Z: z then dz, _GY: dL/dy, _DDL: dL/d delta, _SB: sum_n lambda B
# then dL/du) and one state's scratch rows (_ES: exps; _HS: states; _LAM: adjoints times dl u).
SEGMENT = CHUNK * CKPT_EVERY
# Rows per slot: SEGMENT + 1 are used (_HS keeps the state before the segment too); the padding sets how far
# apart the slots lie modulo 4 KiB. A load whose address matches a pending store's in the low 12 bits waits
# for it (4K aliasing), and the adjoint loads rows a step or two from those it just stored in other slots.
# With 65 rows the slots were one 128-byte row apart modulo 4 KiB, so slot s + k row j - k aliased slot s row
# j. Backward at (1, 192, 16, 4096) on two threads, interleaved runs, ms (rows - 64 = 1, 3, 4, 5, 6, 9, 11):
# 4.79, 3.89, 3.65, 3.76, 4.68, 4.56, 3.79; earlier runs 5.32 -> 4.05 (5) and 9.10 -> 7.30 (5, one thread).
_SLOT_ROWS = SEGMENT + 5
_U, _DL, _DU, _Y, _SG, _Z, _GY, _DDL, _SB, _ES, _HS, _LAM, _ES1, _HS1, _LAM1 = range(15)
_N_SLOTS = 15
assert (_HS1, _LAM1) == (_HS + 3, _LAM + 3)  # a pair's second state's slots: _segment_backward's sums
# rows of the backward's per-state array: A, fixed B and C, mu, dA of a pair's first and second state
_PA, _PB, _PC, _PMU, _PDA, _PA1, _PB1, _PC1, _PMU1, _PDA1 = range(10)

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)  # ln 2 split so that k * _LN2_HI is exact for |k| < 2**11
_LN2_LO = np.float32(1.428606765330187e-06)
_EXP_LO = np.float32(-87.0)  # exp(-87) ~ 1.6e-38: still a normal float, below any state's resolution
_EXP_HI = np.float32(88.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)
_P2 = np.float32(1.0 / 2.0)
_P3 = np.float32(1.0 / 6.0)
_P4 = np.float32(1.0 / 24.0)
_P5 = np.float32(1.0 / 120.0)
_P6 = np.float32(1.0 / 720.0)
_I127 = np.int32(127)
_TWO = np.float32(2.0)
_L3, _L5, _L7, _L9 = np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7), np.float32(1 / 9)
_L11, _L13, _L15 = np.float32(1 / 11), np.float32(1 / 13), np.float32(1 / 15)

# error_model="numpy": no ZeroDivisionError branch per division, which would block vectorisation
_jit = numba.njit(cache=True, fastmath=True, inline="always", error_model="numpy")
_kernel = numba.njit(cache=True, fastmath=True, nogil=True, error_model="numpy")


@numba.extending.intrinsic
def _int_bits_as_float(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (free; lets LLVM build 2**k in vector registers)."""
    from llvmlite import ir

    sig = numba.types.float32(numba.types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@_jit
def _exp(x):
    """exp of a float32, vectorisable: clamp, k = round(x / ln 2), exp(r) by Taylor, scale by 2**k."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    kf = np.floor(x * _LOG2E + _HALF)
    r = (x - kf * _LN2_HI) - kf * _LN2_LO
    p = _P6
    p = p * r + _P5
    p = p * r + _P4
    p = p * r + _P3
    p = p * r + _P2
    p = p * r + _ONE
    p = p * r + _ONE
    return p * _int_bits_as_float((np.int32(kf) + _I127) << np.int32(23))


@_jit
def _sigmoid(x):
    return _ONE / (_ONE + _exp(-x))


@_jit
def _softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), with log1p(e) = 2 atanh(e / (2 + e)) as an odd series in
    s = e / (2 + e) <= 1/3 (eight terms: error < 1e-9). Vectorisable, unlike a call to log1p."""
    e = _exp(-abs(x))
    return _softplus_tail(x, e / (_TWO + e))


@_jit
def _softplus_sigmoid(x):
    """(softplus(x), sigmoid(x)) from one exp and one division: with e = exp(-|x|) and q = 1 / ((1 + e)(2 + e)),
    softplus's s = e / (2 + e) = e (1 + e) q and sigmoid(x) = (1 or e) / (1 + e) = (1 or e) (2 + e) q."""
    e = _exp(-abs(x))
    q = _ONE / ((_ONE + e) * (_TWO + e))
    sg = (_ONE if x >= _ZERO else e) * (_TWO + e) * q
    return _softplus_tail(x, e * (_ONE + e) * q), sg


@_jit
def _softplus_tail(x, s):
    """softplus(x) given s = e / (2 + e), e = exp(-|x|): see _softplus."""
    s2 = s * s
    p = _L15
    p = p * s2 + _L13
    p = p * s2 + _L11
    p = p * s2 + _L9
    p = p * s2 + _L7
    p = p * s2 + _L5
    p = p * s2 + _L3
    p = p * s2 + _ONE
    return max(x, _ZERO) + _TWO * s * p


def _butterfly_masks(size: int) -> list[tuple[int, list[int], list[int]]]:
    """Shuffle masks for a size x size transpose in log2(size) rounds: round k swaps bit k of the row and
    column indices by pairing rows a and a + 2**k (a with bit k clear); indices >= size pick from the
    second row."""
    rounds = []
    for k in range(size.bit_length() - 1):
        s = 1 << k
        low = [c if not c & s else size + c - s for c in range(size)]
        high = [c + s if not c & s else size + c for c in range(size)]
        rounds.append((s, low, high))
    return rounds


def _tile_mover(transpose: bool, streaming: bool = False):
    """A numba intrinsic ``move(src, src_at, src_stride, dst, dst_at, dst_stride)`` copying a TILE x TILE
    tile between C-contiguous float32 arrays by flat element offsets (the tile must lie inside both; not
    checked): row i of the source is src.flat[src_at + i * src_stride + (0 .. TILE-1)], and so for dst.
    With ``transpose`` it writes dst row j = source column j: TILE row loads, log2(TILE) rounds of
    two-input shuffles, TILE row stores. numba has no vector type, and the element-wise transpose loops ran
    at ~2 elements/ns (vs ~20 for this); on this scan's chunk loads that was a quarter of the backward.

    With ``streaming`` the row stores are non-temporal: each writes a whole cache line without reading it
    first and without keeping it in cache. dst's rows must then be 64-byte aligned (a misaligned one faults),
    and the writing thread must call _store_fence before others read them."""

    def move(typingctx, src, src_at, src_stride, dst, dst_at, dst_stride):
        from llvmlite import ir

        sig = numba.types.void(src, src_at, src_stride, dst, dst_at, dst_stride)

        def codegen(context, builder, signature, args):
            vec = ir.VectorType(ir.FloatType(), TILE)

            def row_pointers(k):  # the TILE row pointers of the array in argument k, offsets in k + 1, k + 2
                data = context.make_array(signature.args[k])(context, builder, args[k]).data
                at, stride = (context.cast(builder, args[i], signature.args[i], numba.types.intp)
                              for i in (k + 1, k + 2))
                for i in range(TILE):
                    offset = builder.add(at, builder.mul(stride, ir.Constant(stride.type, i)))
                    yield builder.bitcast(builder.gep(data, [offset]), vec.as_pointer())

            rows = [builder.load(ptr, align=4) for ptr in row_pointers(0)]
            for s, low, high in _butterfly_masks(TILE) if transpose else ():
                for a in range(TILE):
                    if not a & s:
                        low_c, high_c = (ir.Constant(ir.VectorType(ir.IntType(32), TILE), m) for m in (low, high))
                        rows[a], rows[a + s] = (builder.shuffle_vector(rows[a], rows[a + s], low_c),
                                                builder.shuffle_vector(rows[a], rows[a + s], high_c))
            for row, ptr in zip(rows, row_pointers(3), strict=True):
                store = builder.store(row, ptr, align=64 if streaming else 4)
                if streaming:
                    store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
            return context.get_dummy_value()

        return sig, codegen

    move.__name__ = move.__qualname__ = ("_transpose_tile" if transpose else "_copy_tile") + (
        "_streaming" if streaming else "")
    return numba.extending.intrinsic(move)


@numba.extending.intrinsic
def _store_fence(typingctx):
    """sfence: orders this thread's non-temporal stores before everything it does after (x86)."""
    from llvmlite import ir

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(fn, [])
        return context.get_dummy_value()

    return numba.types.void(), codegen


@numba.extending.intrinsic
def _prefetch_rows(typingctx, src, at, stride):
    """Prefetch src.flat[at + i * stride] for i < TILE (a tile's rows) into cache: llvm.prefetch, read, locality
    2 (prefetcht1: into L2, not L1, where the backward's 130 KB of segment buffers live; against prefetcht0, one
    thread at (1, 192, 16, 4096), interleaved runs: backward 8.26 -> 7.60 and 8.00 -> 7.36 ms, forward 3.15 ->
    3.00 ms; on two threads within noise). A prefetch never faults, so the rows may lie outside the array (past
    either end)."""
    from llvmlite import ir

    sig = numba.types.void(src, at, stride)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        at_, stride_ = (context.cast(builder, args[i], signature.args[i], numba.types.intp) for i in (1, 2))
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        for i in range(TILE):
            ptr = builder.gep(data, [builder.add(at_, builder.mul(stride_, ir.Constant(stride_.type, i)))])
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(2), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


def _row_sum_masks(size: int) -> list[tuple[int, list[int], list[int]]]:
    """Shuffle masks that reduce ``size`` vectors to one holding their sums, in log2(size) rounds: round h
    (size/2, ..., 1) adds vectors i and i + h (i < h) into one, lo picking the first and hi the second half of
    every 2h-element block of each (indices >= size pick from the second vector). Row i's sum ends in lane i."""
    rounds = []
    h = size // 2
    while h >= 1:
        lo, hi = [], []
        for k in range(0, size, 2 * h):
            lo += [k + q for q in range(h)] + [size + k + q for q in range(h)]
            hi += [k + h + q for q in range(h)] + [size + k + h + q for q in range(h)]
        rounds.append((h, lo, hi))
        h //= 2
    return rounds


def _row_summer(product: bool, width: int = LANES):
    """A numba intrinsic adding, for i < TILE, the sum over ``width`` lanes of row i to dst.flat[dst_at + i]:
    ``add(src, src_at, src_stride, dst, dst_at)`` sums src.flat[src_at + i * src_stride + (0 .. width-1)];
    with ``product``, ``add(src, src_at, other_at, src_stride, dst, dst_at)`` sums the products of that row
    and the row at other_at of the same array. For C-contiguous float32 arrays (the rows must lie inside src
    and the TILE sums inside dst; not checked). Vector adds, then log2(TILE) rounds of shuffles: 45 vector
    operations for 16 rows where a horizontal sum per row took about 8 and a scalar read-modify-write."""

    def add(typingctx, src, *offsets):
        from llvmlite import ir

        sig = numba.types.void(src, *offsets)

        def codegen(context, builder, signature, args):
            vec = ir.VectorType(ir.FloatType(), TILE)
            i32v = ir.VectorType(ir.IntType(32), TILE)
            ints = [i for i in range(1, len(args)) if i != len(args) - 2]  # all but src and dst
            at = [context.cast(builder, args[i], signature.args[i], numba.types.intp) for i in ints]
            src_data = context.make_array(signature.args[0])(context, builder, args[0]).data
            dst_data = context.make_array(signature.args[-2])(context, builder, args[-2]).data

            def load(row_at, v):
                ptr = builder.gep(src_data, [builder.add(row_at, ir.Constant(row_at.type, v * TILE))])
                return builder.load(builder.bitcast(ptr, vec.as_pointer()), align=4)

            firsts, stride = at[:-2], at[-2]  # the first rows' offsets (one or two), the row stride
            rows = []
            for i in range(TILE):
                row = None
                for v in range(width // TILE):
                    parts = [load(builder.add(first, builder.mul(stride, ir.Constant(stride.type, i))), v)
                             for first in firsts]
                    part = builder.fmul(*parts) if product else parts[0]
                    row = part if row is None else builder.fadd(row, part)
                rows.append(row)
            for h, lo, hi in _row_sum_masks(TILE):
                rows = [builder.fadd(builder.shuffle_vector(rows[i], rows[i + h], ir.Constant(i32v, lo)),
                                     builder.shuffle_vector(rows[i], rows[i + h], ir.Constant(i32v, hi)))
                        for i in range(h)]
            out = builder.bitcast(builder.gep(dst_data, [at[-1]]), vec.as_pointer())
            builder.store(builder.fadd(builder.load(out, align=4), rows[0]), out, align=4)
            return context.get_dummy_value()

        return sig, codegen

    if product:
        def add_products(typingctx, src, src_at, other_at, src_stride, dst, dst_at):
            return add(typingctx, src, src_at, other_at, src_stride, dst, dst_at)

        add_products.__name__ = add_products.__qualname__ = "_add_row_product_sums"
        return numba.extending.intrinsic(add_products)

    def add_sums(typingctx, src, src_at, src_stride, dst, dst_at):
        return add(typingctx, src, src_at, src_stride, dst, dst_at)

    add_sums.__name__ = add_sums.__qualname__ = "_add_row_sums"
    return numba.extending.intrinsic(add_sums)


_add_row_sums = _row_summer(product=False)
_add_row_product_sums = _row_summer(product=True)
_add_tile_row_sums = _row_summer(product=False, width=TILE)  # for the backward's TILE-lane blocks
_add_tile_row_product_sums = _row_summer(product=True, width=TILE)


_transpose_tile = _tile_mover(transpose=True)
_copy_tile = _tile_mover(transpose=False)
_transpose_tile_streaming = _tile_mover(transpose=True, streaming=True)
_copy_tile_streaming = _tile_mover(transpose=False, streaming=True)


@_jit
def _load_lanes(src, at, s_c, s_t, nl, tn, dst, ahead, r0=0):
    """dst[j, lane] = src[at + lane * s_c + j * s_t] for lane < nl, j < tn (other entries untouched: lanes past
    nl stay zero). src is a 1-D view of a (b, d, L) tensor's memory, s_c and s_t its channel and time strides:
    time-contiguous (the usual layout) moves 16x16 tiles by shuffles, channel-contiguous (a transposed
    (b, L, d) tensor, as Mamba's z and delta are) copies each step's lanes as they are. Both prefetch the
    rows ``ahead`` steps on (see PREFETCH_AHEAD). With ``r0``, step j goes to dst row r0 + j instead."""
    tiled = nl // TILE * TILE if tn == TILE and (s_t == 1 or s_c == 1) else 0
    width = dst.shape[1]  # the buffer's row: LANES floats, or TILE in the backward's narrow blocks
    if s_t == 1:  # (a branch per tile inside one loop cost the forward 8%)
        for l0 in range(0, tiled, TILE):
            _prefetch_rows(src, at + l0 * s_c + ahead, s_c)
            _transpose_tile(src, at + l0 * s_c, s_c, dst, r0 * width + l0, width)
    else:
        for l0 in range(0, tiled, TILE):
            _prefetch_rows(src, at + l0 + ahead * s_t, s_t)
            _copy_tile(src, at + l0, s_t, dst, r0 * width + l0, width)
    for lane in range(tiled, nl):
        for j in range(tn):
            dst[r0 + j, lane] = src[at + lane * s_c + j * s_t]


@_jit
def _store_lanes(src, dst, at, s_c, s_t, nl, tn, r0=0):
    """dst[at + lane * s_c + j * s_t] = src[r0 + j, lane] for lane < nl, j < tn: the inverse of _load_lanes, into
    a 1-D view of an output that is time-contiguous (16x16 tiles transposed) or channel-contiguous (copied).

    Whole tiles go out with non-temporal stores when their rows are 64-byte aligned (in a (b, d, L) output
    whose rows and steps are multiples of 16 floats apart): the outputs are written once and not read back
    here, so reading each line in before overwriting it, as ordinary stores do, only cost time. One thread at
    (1, 192, 16, 4096), interleaved runs: forward 3.53 -> 3.20 ms, backward 10.5 -> 9.1 ms (medians)."""
    tiled = nl // TILE * TILE if tn == TILE and (s_t == 1 or s_c == 1) else 0
    streaming = (dst.ctypes.data + 4 * at) % 64 == 0 and (s_c if s_t == 1 else s_t) % TILE == 0
    width = src.shape[1]  # the buffer's row, as in _load_lanes
    if s_t == 1 and streaming:
        for l0 in range(0, tiled, TILE):
            _transpose_tile_streaming(src, r0 * width + l0, width, dst, at + l0 * s_c, s_c)
    elif s_t == 1:
        for l0 in range(0, tiled, TILE):
            _transpose_tile(src, r0 * width + l0, width, dst, at + l0 * s_c, s_c)
    elif streaming:
        for l0 in range(0, tiled, TILE):
            _copy_tile_streaming(src, r0 * width + l0, width, dst, at + l0, s_t)
    else:
        for l0 in range(0, tiled, TILE):
            _copy_tile(src, r0 * width + l0, width, dst, at + l0, s_t)
    for lane in range(tiled, nl):
        for j in range(tn):
            dst[at + lane * s_c + j * s_t] = src[r0 + j, lane]


@_jit
def _seq_at(strides, k, bi, c0, t0):
    """Flat offset of element (bi, c0, t0) of sequence tensor k, from its (b, d, L) element strides."""
    return bi * strides[k, 0] + c0 * strides[k, 1] + t0 * strides[k, 2]


@_jit
def _load_steps(src, strides, k, bi, c0, nl, t0, tn, dst, ahead):
    """dst[j, lane] = sequence tensor k's element (bi, c0 + lane, t0 + j) for lane < nl, j < tn, by _load_lanes
    on TILE steps at a time (the backward loads SEGMENT steps)."""
    for j0 in range(0, tn, TILE):
        _load_lanes(src, _seq_at(strides, k, bi, c0, t0 + j0), strides[k, 1], strides[k, 2], nl, min(TILE, tn - j0),
                    dst, ahead, j0)


@_jit
def _store_steps(src, dst, strides, k, bi, c0, nl, t0, tn):
    """The inverse of _load_steps: src[j, lane] into output k's element (bi, c0 + lane, t0 + j)."""
    for j0 in range(0, tn, TILE):
        _store_lanes(src, dst, _seq_at(strides, k, bi, c0, t0 + j0), strides[k, 1], strides[k, 2], nl,
                     min(TILE, tn - j0), j0)


@_jit
def _block_params(A, Bfix, Cfix, D, bias, c0, nl, lanes):
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


@_jit
def _load_chunk(u, delta, strides, softplus, bias_blk, d_blk, bi, c0, nl, t0, tn, lanes, ub, dlb, dub, yb, sgb,
                ahead):
    """Load one chunk of u and delta (sequence tensors 0 and 1 of ``strides``) into (time, lane) buffers and
    prepare per-step terms: dlb = softplus(delta + bias) (or delta + bias), sgb = softplus's derivative (with
    softplus and only if sgb has rows: the backward's), dub = dlb * u, and yb = D * u (the skip term the scan
    adds to)."""
    if tn <= TILE:  # the forward's chunks: through _load_steps' loop its forward measured 8% slower
        _load_lanes(u, _seq_at(strides, 0, bi, c0, t0), strides[0, 1], strides[0, 2], nl, tn, ub, ahead)
        _load_lanes(delta, _seq_at(strides, 1, bi, c0, t0), strides[1, 1], strides[1, 2], nl, tn, dlb, ahead)
    else:
        _load_steps(u, strides, 0, bi, c0, nl, t0, tn, ub, ahead)
        _load_steps(delta, strides, 1, bi, c0, nl, t0, tn, dlb, ahead)
    # separate branch-free loops: a condition inside the lane loop stopped LLVM from vectorising it (and the
    # forward measured 1.37 -> 1.60 ms at (1, 192, 16, 4096) on two threads with the bias added inside softplus's)
    for j in range(tn):
        for lane in range(lanes):
            dlb[j, lane] += bias_blk[lane]
    if softplus and sgb.shape[0] > 0:  # the backward: softplus and its derivative, from one exp
        for j in range(tn):
            for lane in range(lanes):
                dl, sg = _softplus_sigmoid(dlb[j, lane])
                dlb[j, lane] = dl
                sgb[j, lane] = sg
    elif softplus:
        for j in range(tn):
            for lane in range(lanes):
                dlb[j, lane] = _softplus(dlb[j, lane])
    for j in range(tn):
        for lane in range(lanes):
            dub[j, lane] = dlb[j, lane] * ub[j, lane]
            yb[j, lane] = d_blk[lane] * ub[j, lane]


def _chunk_recurrence(selective: bool):
    """The forward's chunk recurrence; with ``selective`` compiled for selective B and C only (no branch per
    B/C value, no multiply by the fixed parameters' ones: forward at (1, 192, 16, 4096) on one thread,
    interleaved runs, 6.18 -> 5.82 ms, minima 5.81 -> 5.66)."""

    @_jit
    def recur_y(h, tn, t0, bi, gb, gc, Bsel, Csel, a_blk, b_blk, c_blk, dlb, dub, yb, lanes):
        """The recurrence over one chunk, h_j = exp(dl_j A) h_{j-1} + dl_j u_j B_j, and y_j += <h_j, C_j> into
        yb (which holds D * u); h (N, lanes) holds the state before the chunk and ends as the state after it.

        One state n at a time, 4 steps per pass over the lanes, so the state stays in a register for 4 steps
        (forward at (1, 192, 16, 4096) on one thread: 1 step per pass 1.94 ms, 2 steps 1.70, 4 steps 1.48,
        8 steps 1.48; the previous time-outer loop, which stored every state, 2.35). The steps are written
        out: an inner step loop or an inline helper per step kept LLVM from vectorising the lane loop."""
        d_state = h.shape[0]
        has_bsel = selective or Bsel.shape[0] > 0
        has_csel = selective or Csel.shape[0] > 0
        for n in range(d_state):
            for jb in range(tn // 4):
                j = jb * 4
                b0 = Bsel[bi, gb, n, t0 + j] if has_bsel else _ONE
                b1 = Bsel[bi, gb, n, t0 + j + 1] if has_bsel else _ONE
                b2 = Bsel[bi, gb, n, t0 + j + 2] if has_bsel else _ONE
                b3 = Bsel[bi, gb, n, t0 + j + 3] if has_bsel else _ONE
                c0 = Csel[bi, gc, n, t0 + j] if has_csel else _ONE
                c1 = Csel[bi, gc, n, t0 + j + 1] if has_csel else _ONE
                c2 = Csel[bi, gc, n, t0 + j + 2] if has_csel else _ONE
                c3 = Csel[bi, gc, n, t0 + j + 3] if has_csel else _ONE
                for lane in range(lanes):
                    an = a_blk[n, lane]
                    bn = _ONE if selective else b_blk[n, lane]
                    cn = _ONE if selective else c_blk[n, lane]
                    hv = h[n, lane]
                    hv = _exp(dlb[j, lane] * an) * hv + dub[j, lane] * (b0 * bn)
                    yb[j, lane] += hv * (c0 * cn)
                    hv = _exp(dlb[j + 1, lane] * an) * hv + dub[j + 1, lane] * (b1 * bn)
                    yb[j + 1, lane] += hv * (c1 * cn)
                    hv = _exp(dlb[j + 2, lane] * an) * hv + dub[j + 2, lane] * (b2 * bn)
                    yb[j + 2, lane] += hv * (c2 * cn)
                    hv = _exp(dlb[j + 3, lane] * an) * hv + dub[j + 3, lane] * (b3 * bn)
                    yb[j + 3, lane] += hv * (c3 * cn)
                    h[n, lane] = hv
            for j in range(tn // 4 * 4, tn):
                bs = Bsel[bi, gb, n, t0 + j] if has_bsel else _ONE
                cs = Csel[bi, gc, n, t0 + j] if has_csel else _ONE
                for lane in range(lanes):
                    bn = _ONE if selective else b_blk[n, lane]
                    cn = _ONE if selective else c_blk[n, lane]
                    hv = _exp(dlb[j, lane] * a_blk[n, lane]) * h[n, lane] + dub[j, lane] * (bs * bn)
                    h[n, lane] = hv
                    yb[j, lane] += hv * (cs * cn)

    return recur_y


_recur_y = _chunk_recurrence(selective=False)
_recur_y_selective = _chunk_recurrence(selective=True)


@_kernel
def _scan_fwd(job_lo, job_hi, u, delta, bias, softplus, A, Bsel, Bfix, Csel, Cfix, D, z, strides, job_b, job_c,
              job_n, chan_per_gb, chan_per_gc, lanes, seqlen, out, last_state, ckpt, save_ckpt, y_saved):
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
        a_blk, b_blk, c_blk, d_blk, bias_blk = _block_params(A, Bfix, Cfix, D, bias, c0, nl, lanes)
        h[:] = _ZERO
        for buf in (dlb, ub, zb):
            buf[:] = _ZERO
        for k in range(n_chunks):
            t0 = k * CHUNK
            tn = min(CHUNK, seqlen - t0)
            if save_ckpt and k % CKPT_EVERY == 0:
                for n in range(d_state):
                    for lane in range(nl):
                        ckpt[bi, k // CKPT_EVERY, n, np.uint64(c0 + lane)] = h[n, lane]  # see _segment_backward
            _load_chunk(u, delta, strides, softplus, bias_blk, d_blk, bi, c0, nl, t0, tn, lanes, ub, dlb, dub,
                        yb, no_sig, PREFETCH_AHEAD)
            if selective:
                _recur_y_selective(h, tn, t0, bi, gb, gc, Bsel, Csel, a_blk, b_blk, c_blk, dlb, dub, yb, lanes)
            else:
                _recur_y(h, tn, t0, bi, gb, gc, Bsel, Csel, a_blk, b_blk, c_blk, dlb, dub, yb, lanes)
            if y_saved.shape[0] > 0:
                _store_lanes(yb, y_saved, _seq_at(strides, 7, bi, c0, t0), strides[7, 1], strides[7, 2], nl, tn)
            if has_z:
                _load_lanes(z, _seq_at(strides, 2, bi, c0, t0), strides[2, 1], strides[2, 2], nl, tn, zb,
                            PREFETCH_AHEAD)
                for j in range(tn):
                    for lane in range(lanes):
                        zv = zb[j, lane]
                        yb[j, lane] *= zv * _sigmoid(zv)
            _store_lanes(yb, out, _seq_at(strides, 4, bi, c0, t0), strides[4, 1], strides[4, 2], nl, tn)
        for lane in range(nl):
            for n in range(d_state):
                last_state[bi, c0 + lane, n] = h[n, lane]
    _store_fence()  # the output's streaming stores are visible to other threads from here on


@_jit
def _flat5(a, i0, i1, i2, i3, i4):
    """Flat element offset of a[i0, i1, i2, i3, i4] in a C-contiguous 5-D array."""
    return (((i0 * a.shape[1] + i1) * a.shape[2] + i2) * a.shape[3] + i3) * a.shape[4] + i4


def _segment_backward(selective: bool):
    """The backward's work on one segment (below); with ``selective`` compiled for selective B and C only, as
    _chunk_recurrence (backward at (1, 192, 16, 4096) on one thread, interleaved runs: 16.1 -> 15.2 ms,
    minima 15.0 -> 14.2)."""

    @_jit
    def segment_adjoint(wk, par, mu, dA_acc, dBf_acc, dCf_acc, ckpt, seg_i, tn, t0, tid, bi, c0, nl, gb, gc, Bsel, Csel,
                         a_blk, b_blk, c_blk, dBsel_part, dCsel_part, lanes):
        """The backward through one segment (tn <= SEGMENT steps from t0) of a block's states, two states n, n + 1
        at a time so that their rows stay in cache; wk holds the segment's loaded inputs and the states' scratch
        rows (slots _U ... _LAM1):

        1. recompute both states from their checkpoints as in _recur_y, keeping wk[_HS] and wk[_HS1] (row 0: the
           state before the segment, row j + 1: after step j) and wk[_ES][j] = a_j = exp(dl_j A_n) (and _ES1);
        2. run both adjoints backwards, lambda_j = gy_j C_j + a_{j+1} lambda_{j+1}, with mu[n] = a_{j+1} lambda_{j+1}
           carried in and out, keeping wk[_LAM][j] = lambda_j dl_j u_j and accumulating
           ddl[j] += lambda a_j h_{j-1} A_n, sb[j] += lambda B_j and dA[n] += lambda a_j h_{j-1} dl_j (4 steps per
           pass, mu in a register). Two states per pass: each adjoint is a chain of dependent multiply-adds, and
           two of them in one loop overlap their latencies and share the loads of gy, dl u, dl and the updates of
           ddl and sb. Backward at (1, 192, 16, 4096), interleaved runs against one state at a time: one thread
           8.80 -> 7.58 ms; two 4.85 -> 4.15 and, with the variants' order in the run swapped, 4.20 -> 4.12 ms
           (medians; on two threads whichever variant a run timed first came out slower);
        3. sum B's and C's gradients, lambda dl u (which the adjoint leaves in wk[_LAM]) and gy h (products of
           the rows wk[_GY] and wk[_HS]), over the block's channels (lanes): _add_row_sums and
           _add_row_product_sums per 16-step tile. Against a horizontal sum per step and state, one thread at
           (1, 192, 16, 4096), interleaved runs: the sums' share of the backward's profile 19% -> 12%, medians
           15.4 -> 14.7, 16.3 -> 15.0, 22.0 -> 21.0, 20.5 -> 19.6 ms (the minima within noise of each other).
           Multiplying gy h inside the sums rather than in a pass that stored them first (storing them from
           the adjoint loop stopped LLVM vectorising it): medians 8.07 -> 7.61 ms on one thread, 6.52 -> 5.83
           on two.

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
            live1 = _ONE if n + 1 < d_state else _ZERO
            for lane in range(lanes):
                par[_PA, lane] = a_blk[n, lane]
                par[_PB, lane] = b_blk[n, lane]
                par[_PC, lane] = c_blk[n, lane]
                par[_PMU, lane] = mu[n, lane]
                par[_PDA, lane] = _ZERO
                par[_PA1, lane] = a_blk[n1, lane]
                par[_PB1, lane] = b_blk[n1, lane] * live1
                par[_PC1, lane] = c_blk[n1, lane] * live1
                par[_PMU1, lane] = mu[n1, lane] * live1
                par[_PDA1, lane] = _ZERO
            for lane in range(nl):  # lanes >= nl hold zeros
                # an unsigned index: numba wraps negative signed indices, and with that select per lane LLVM
                # turned this row copy into a vector gather (13% of a one-thread backward's samples)
                wk[_HS, 0, lane] = ckpt[bi, seg_i, n, np.uint64(c0 + lane)]
                wk[_HS1, 0, lane] = ckpt[bi, seg_i, n1, np.uint64(c0 + lane)] * live1
            # 1. both states forward through the segment, 4 steps per pass
            for jb in range(n_blocks):
                j = jb * 4
                b00 = Bsel[bi, gb, n, t0 + j] if has_bsel else _ONE
                b01 = Bsel[bi, gb, n, t0 + j + 1] if has_bsel else _ONE
                b02 = Bsel[bi, gb, n, t0 + j + 2] if has_bsel else _ONE
                b03 = Bsel[bi, gb, n, t0 + j + 3] if has_bsel else _ONE
                b10 = Bsel[bi, gb, n1, t0 + j] * live1 if has_bsel else _ONE
                b11 = Bsel[bi, gb, n1, t0 + j + 1] * live1 if has_bsel else _ONE
                b12 = Bsel[bi, gb, n1, t0 + j + 2] * live1 if has_bsel else _ONE
                b13 = Bsel[bi, gb, n1, t0 + j + 3] * live1 if has_bsel else _ONE
                for lane in range(lanes):
                    a0 = par[_PA, lane]
                    a1 = par[_PA1, lane]
                    bn0 = _ONE if selective else par[_PB, lane]
                    bn1 = _ONE if selective else par[_PB1, lane]
                    h0 = wk[_HS, j, lane]
                    h1 = wk[_HS1, j, lane]
                    dl = wk[_DL, j, lane]
                    du = wk[_DU, j, lane]
                    e = _exp(dl * a0)
                    wk[_ES, j, lane] = e
                    h0 = e * h0 + du * (b00 * bn0)
                    wk[_HS, j + 1, lane] = h0
                    e = _exp(dl * a1)
                    wk[_ES1, j, lane] = e
                    h1 = e * h1 + du * (b10 * bn1)
                    wk[_HS1, j + 1, lane] = h1
                    dl = wk[_DL, j + 1, lane]
                    du = wk[_DU, j + 1, lane]
                    e = _exp(dl * a0)
                    wk[_ES, j + 1, lane] = e
                    h0 = e * h0 + du * (b01 * bn0)
                    wk[_HS, j + 2, lane] = h0
                    e = _exp(dl * a1)
                    wk[_ES1, j + 1, lane] = e
                    h1 = e * h1 + du * (b11 * bn1)
                    wk[_HS1, j + 2, lane] = h1
                    dl = wk[_DL, j + 2, lane]
                    du = wk[_DU, j + 2, lane]
                    e = _exp(dl * a0)
                    wk[_ES, j + 2, lane] = e
                    h0 = e * h0 + du * (b02 * bn0)
                    wk[_HS, j + 3, lane] = h0
                    e = _exp(dl * a1)
                    wk[_ES1, j + 2, lane] = e
                    h1 = e * h1 + du * (b12 * bn1)
                    wk[_HS1, j + 3, lane] = h1
                    dl = wk[_DL, j + 3, lane]
                    du = wk[_DU, j + 3, lane]
                    e = _exp(dl * a0)
                    wk[_ES, j + 3, lane] = e
                    h0 = e * h0 + du * (b03 * bn0)
                    wk[_HS, j + 4, lane] = h0
                    e = _exp(dl * a1)
                    wk[_ES1, j + 3, lane] = e
                    h1 = e * h1 + du * (b13 * bn1)
                    wk[_HS1, j + 4, lane] = h1
            for j in range(n_blocks * 4, tn):
                bs0 = Bsel[bi, gb, n, t0 + j] if has_bsel else _ONE
                bs1 = Bsel[bi, gb, n1, t0 + j] * live1 if has_bsel else _ONE
                for lane in range(lanes):
                    a0 = par[_PA, lane]
                    a1 = par[_PA1, lane]
                    bn0 = _ONE if selective else par[_PB, lane]
                    bn1 = _ONE if selective else par[_PB1, lane]
                    dl = wk[_DL, j, lane]
                    du = wk[_DU, j, lane]
                    e = _exp(dl * a0)
                    wk[_ES, j, lane] = e
                    wk[_HS, j + 1, lane] = e * wk[_HS, j, lane] + du * (bs0 * bn0)
                    e = _exp(dl * a1)
                    wk[_ES1, j, lane] = e
                    wk[_HS1, j + 1, lane] = e * wk[_HS1, j, lane] + du * (bs1 * bn1)
            # 2. both adjoints backwards: the steps past the last whole block first, then 4 steps per pass
            # (written out, as in _recur_y: a step loop or a helper per step kept LLVM from vectorising)
            for jr in range(tn - n_blocks * 4):
                j = tn - 1 - jr
                bs0 = Bsel[bi, gb, n, t0 + j] if has_bsel else _ONE
                bs1 = Bsel[bi, gb, n1, t0 + j] * live1 if has_bsel else _ONE
                qs0 = Csel[bi, gc, n, t0 + j] if has_csel else _ONE
                qs1 = Csel[bi, gc, n1, t0 + j] * live1 if has_csel else _ONE
                for lane in range(lanes):
                    a0 = par[_PA, lane]
                    a1 = par[_PA1, lane]
                    bn0 = _ONE if selective else par[_PB, lane]
                    bn1 = _ONE if selective else par[_PB1, lane]
                    cn0 = _ONE if selective else par[_PC, lane]
                    cn1 = _ONE if selective else par[_PC1, lane]
                    m0 = par[_PMU, lane]
                    m1 = par[_PMU1, lane]
                    da0 = _ZERO
                    da1 = _ZERO
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
                b00 = Bsel[bi, gb, n, t0 + j] if has_bsel else _ONE
                b01 = Bsel[bi, gb, n, t0 + j + 1] if has_bsel else _ONE
                b02 = Bsel[bi, gb, n, t0 + j + 2] if has_bsel else _ONE
                b03 = Bsel[bi, gb, n, t0 + j + 3] if has_bsel else _ONE
                b10 = Bsel[bi, gb, n1, t0 + j] * live1 if has_bsel else _ONE
                b11 = Bsel[bi, gb, n1, t0 + j + 1] * live1 if has_bsel else _ONE
                b12 = Bsel[bi, gb, n1, t0 + j + 2] * live1 if has_bsel else _ONE
                b13 = Bsel[bi, gb, n1, t0 + j + 3] * live1 if has_bsel else _ONE
                q00 = Csel[bi, gc, n, t0 + j] if has_csel else _ONE
                q01 = Csel[bi, gc, n, t0 + j + 1] if has_csel else _ONE
                q02 = Csel[bi, gc, n, t0 + j + 2] if has_csel else _ONE
                q03 = Csel[bi, gc, n, t0 + j + 3] if has_csel else _ONE
                q10 = Csel[bi, gc, n1, t0 + j] * live1 if has_csel else _ONE
                q11 = Csel[bi, gc, n1, t0 + j + 1] * live1 if has_csel else _ONE
                q12 = Csel[bi, gc, n1, t0 + j + 2] * live1 if has_csel else _ONE
                q13 = Csel[bi, gc, n1, t0 + j + 3] * live1 if has_csel else _ONE
                for lane in range(lanes):
                    a0 = par[_PA, lane]
                    a1 = par[_PA1, lane]
                    bn0 = _ONE if selective else par[_PB, lane]
                    bn1 = _ONE if selective else par[_PB1, lane]
                    cn0 = _ONE if selective else par[_PC, lane]
                    cn1 = _ONE if selective else par[_PC1, lane]
                    m0 = par[_PMU, lane]
                    m1 = par[_PMU1, lane]
                    da0 = _ZERO
                    da1 = _ZERO
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
                        _add_row_sums(wk, lam_at, width, dBsel_part, _flat5(dBsel_part, tid, bi, gb, nk, t0 + j0))
                    elif has_bsel:
                        _add_tile_row_sums(wk, lam_at, width, dBsel_part, _flat5(dBsel_part, tid, bi, gb, nk, t0 + j0))
                    if has_csel and width == LANES:
                        _add_row_product_sums(wk, gy_at, hs_at + width, width, dCsel_part,
                                              _flat5(dCsel_part, tid, bi, gc, nk, t0 + j0))
                    elif has_csel:
                        _add_tile_row_product_sums(wk, gy_at, hs_at + width, width, dCsel_part,
                                                   _flat5(dCsel_part, tid, bi, gc, nk, t0 + j0))
                for j in range(tiled, tn):
                    if has_bsel:
                        acc_b = _ZERO
                        for lane in range(lanes):
                            acc_b += wk[lam_slot, j, lane]
                        dBsel_part[tid, bi, gb, nk, t0 + j] += acc_b
                    if has_csel:
                        acc_c = _ZERO
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
    """The backward kernel for blocks of ``width`` channels, LANES or TILE (see _block_width): its buffers'
    rows are ``width`` floats, a constant of each compiled kernel, as in _scan_fwd."""

    @_kernel
    def scan_bwd(job_lo, job_hi, tid, u, delta, bias, softplus, A, Bsel, Bfix, Csel, Cfix, D, z, strides, gout, glast,
                 ckpt, y_saved, job_b, job_c, job_n, chan_per_gb, chan_per_gc, lanes, seqlen, du_out, ddelta_out,
                 dz_out, dA_part, dD_part, dbias_part, dBsel_part, dBfix_part, dCsel_part, dCfix_part):
        """Backward scan for jobs [job_lo, job_hi) on worker ``tid``: gradients w.r.t. u, delta and z, and
        worker ``tid``'s partial sums for A (workers, d, N), D and delta_bias (workers, d), and B and C
        (workers, b, G, N, L) or (workers, d, N). Inputs as in _scan_fwd, gout a 1-D view like them with
        strides[3]; du_out, ddelta_out, dz_out: 1-D, strides[4], [5], [6] (dz_out empty without z); glast: the last
        state's gradient (b, d, N) or empty; ckpt and y_saved: what the forward saved (see _scan_fwd).

        Segments of SEGMENT steps (one checkpoint each) are processed last to first: load the segment, the
        gate's gradient, then _segment_adjoint (each state's recomputation from its checkpoint, adjoint and B/C
        gradient sums), then the per-step gradients of u and delta. At (1, 192, 16, 4096), the three kernels
        timed in interleaved rounds in one process (medians): one thread 13.0 -> 10.0 ms, two 8.0 -> 6.1 ms
        against the previous kernel, which worked on 16-step chunks (a pass over each 32-step segment's first
        chunk found the second's starting state) with a buffer per quantity; 8.4 and 4.6 ms with the streaming
        stores (see _store_lanes)."""
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
            a_blk, b_blk, c_blk, d_blk, bias_blk = _block_params(A, Bfix, Cfix, D, bias, c0, nl, lanes)
            wk[:] = _ZERO  # lanes >= nl must hold zeros
            if not softplus:
                sgb[:] = _ONE  # delta + bias's derivative, multiplied in below as softplus's
            for buf in (mu, dA_acc, dBf_acc, dCf_acc):
                buf[:] = _ZERO
            if glast.shape[0] > 0:  # the last state's gradient starts the adjoint: lambda_{L-1} += dL/dh_{L-1}
                for lane in range(nl):
                    for n in range(d_state):
                        mu[n, lane] = glast[bi, c0 + lane, n]
            dD_acc[:] = _ZERO
            dbias_acc[:] = _ZERO
            for sg_ in range(n_segments):
                seg_i = n_segments - 1 - sg_
                t0 = seg_i * SEGMENT
                tn = min(SEGMENT, seqlen - t0)
                # the next segment's checkpoint rows, one per state: each state's recomputation starts with a
                # load of its row, and when that misses the cache the state waits for it
                for n0 in range(0, d_state, TILE):
                    for l0 in range(0, nl, TILE):
                        _prefetch_rows(ckpt, ((bi * n_segments + seg_i - 1) * d_state + n0) * ckpt.shape[3] + c0 + l0,
                                       ckpt.shape[3])
                _load_chunk(u, delta, strides, softplus, bias_blk, d_blk, bi, c0, nl, t0, tn, lanes, ub, dlb, dub, yb,
                            sgb, -PREFETCH_AHEAD)
                _load_steps(gout, strides, 3, bi, c0, nl, t0, tn, gyb, -PREFETCH_AHEAD)
                if has_z:  # the gate: gy = g silu(z), dz = g sg (1 + z (1 - sg)) y with the forward's y
                    _load_steps(z, strides, 2, bi, c0, nl, t0, tn, zb, -PREFETCH_AHEAD)
                    _load_steps(y_saved, strides, 7, bi, c0, nl, t0, tn, yb, -PREFETCH_AHEAD)
                    for j in range(tn):
                        for lane in range(lanes):
                            zv = zb[j, lane]
                            sg = _sigmoid(zv)
                            g = gyb[j, lane]
                            zb[j, lane] = g * sg * (_ONE + zv * (_ONE - sg)) * yb[j, lane]  # dL/dz
                            gyb[j, lane] = g * zv * sg
                    _store_steps(zb, dz_out, strides, 6, bi, c0, nl, t0, tn)
                for j in range(tn):
                    for lane in range(lanes):
                        dD_acc[lane] += gyb[j, lane] * ub[j, lane]
                        ddl[j, lane] = _ZERO
                        sb[j, lane] = _ZERO
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
                _store_steps(sb, du_out, strides, 4, bi, c0, nl, t0, tn)
                _store_steps(ddl, ddelta_out, strides, 5, bi, c0, nl, t0, tn)
            for lane in range(nl):
                dD_part[tid, c0 + lane] += dD_acc[lane]
                dbias_part[tid, c0 + lane] += dbias_acc[lane]
                for n in range(d_state):
                    dA_part[tid, c0 + lane, n] += dA_acc[n, lane]
                    if Bsel.shape[0] == 0:
                        dBfix_part[tid, c0 + lane, n] += dBf_acc[n, lane]
                    if Csel.shape[0] == 0:
                        dCfix_part[tid, c0 + lane, n] += dCf_acc[n, lane]
        _store_fence()  # as in _scan_fwd

    return scan_bwd


_scan_bwd = {width: _backward_kernel(width) for width in (LANES, TILE)}  # each compiled on first use


@_kernel
def _exp_rows(job_lo, job_hi, x, out, repeats):
    """out[i] = exp(x[i]) with the kernels' polynomial exp for rows [job_lo, job_hi), ``repeats`` times:
    the machine's vectorised exp throughput for ``medssm bench scan``."""
    for _ in range(repeats):
        for row in range(job_lo, job_hi):
            for i in range(x.shape[1]):
                out[row, i] = _exp(x[row, i])


def exp_throughput(threads: int, size: int = 1 << 14, repeats: int = 200) -> float:
    """Exps per second of the kernels' vectorised exp on ``threads`` threads, each on its own in-cache
    buffer of ``size`` floats (best of 20 runs of about half a millisecond)."""
    x = -np.random.default_rng(0).random((threads, size), dtype=np.float32)
    out = np.empty_like(x)
    _run_jobs(_exp_rows, threads, threads, x, out, 1)  # compile / load, warm the buffers
    best = math.inf
    for _ in range(20):
        start = time.perf_counter()
        _run_jobs(_exp_rows, threads, threads, x, out, repeats)
        best = min(best, time.perf_counter() - start)
    return x.size * repeats / best


@functools.lru_cache(maxsize=64)  # a plan per call: 0.037 -> 0.021 ms at (1, 192, 16, 4096) with the cache
def _jobs(batch: int, dim: int, chan_per_group: int, width: int = LANES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split (batch, d) into blocks of at most ``width`` channels that never straddle a group boundary (shared
    between calls: not to be modified)."""
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


def _f32(t: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous NumPy view (a copy only when the dtype or layout asks for one).

    Copies are made by NumPy, not torch: a parallel torch op right before the kernels leaves torch's OpenMP
    workers spinning on the cores the kernels' threads need (see medssm/__init__.py)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16
        t = t.float()
    return np.ascontiguousarray(t.numpy(), dtype=np.float32)


def _sequence(t: torch.Tensor) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A (b, d, L) tensor as a 1-D float32 NumPy view of its memory and its (b, d, L) element strides. No copy
    when it is fp32 with its time or its channel axis contiguous: Mamba's delta and z are transposed
    (b, L, d) tensors, and copying them cost as much as the scan itself (2 ms of a 3.7 ms scan call at
    d=192, L=4096). Anything else is copied to a contiguous (b, d, L) array."""
    t = t.detach()
    if t.dtype == torch.float32 and 1 in t.stride()[1:] and t.numel() > 0:
        span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
        return t.as_strided((span,), (1,)).numpy(), t.stride()
    flat = _f32(t)
    return flat.reshape(-1), tuple(st // 4 for st in flat.strides)


def _new_sequence(batch: int, dim: int, seqlen: int, like: np.ndarray) -> tuple[torch.Tensor, np.ndarray, tuple]:
    """A new fp32 (b, d, L) tensor, channels last when the sequence whose element strides are ``like`` has its
    channel axis contiguous and its time axis not (Mamba's transposed tensors: their gradients and the scan's
    output then reach the next op without a transposing copy), else contiguous; with its 1-D NumPy view and
    its element strides."""
    if like[1] == 1 and like[2] != 1:
        t = torch.empty(batch, seqlen, dim).transpose(1, 2)
    else:
        t = torch.empty(batch, dim, seqlen)
    return t, t.as_strided((t.numel(),), (1,)).numpy(), t.stride()


def _bc_layout(t: torch.Tensor, dim: int) -> tuple[np.ndarray, np.ndarray, int]:
    """B or C as (selective (b, G, N, L), fixed (d, N), channels per group); the unused one is empty. The
    selective layout is the caller's, so a contiguous fp32 B or C is read in place; each state's steps are
    contiguous, which is how the kernels read them."""
    if t.dim() == 2:
        return np.zeros((0, 0, 0, 0), np.float32), _f32(t), dim
    g = t.unsqueeze(1) if t.dim() == 3 else t
    return _f32(g), np.zeros((0, 0), np.float32), dim // g.shape[1]


class _Plan:
    """The kernels' inputs as float32 NumPy arrays (views of the torch tensors where possible)."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        batch, dim, seqlen = u.shape
        self.shape = (batch, dim, seqlen, A.shape[1])
        self.Bsel, self.Bfix, self.cpg_b = _bc_layout(B, dim)
        self.Csel, self.Cfix, self.cpg_c = _bc_layout(C, dim)
        zeros = np.zeros(dim, np.float32)
        bias = zeros if delta_bias is None else _f32(delta_bias)
        # u, delta, z and the backward's output gradient as 1-D views with their strides in rows 0-3; rows 4-6
        # hold the strides of the outputs: the forward's out or the backward's du (laid out as u), ddelta, dz;
        # row 7 those of the output before the gate that the forward saves for the backward
        self.strides = np.zeros((8, 3), np.int64)
        seqs = []
        for row, t in enumerate((u, delta, z)):
            flat, strides = _sequence(t) if t is not None else (np.zeros(0, np.float32), (0, 0, 0))
            seqs.append(flat)
            self.strides[row] = strides
        self.args = (seqs[0], seqs[1], bias, bool(delta_softplus), _f32(A), self.Bsel, self.Bfix,
                     self.Csel, self.Cfix, zeros if D is None else _f32(D), seqs[2], self.strides)
        self.has_z = z is not None
        chan_per_group = math.gcd(self.cpg_b, self.cpg_c)
        # one width for both passes: the same channels per job (see _block_width)
        self.lanes = _block_width(batch, dim, chan_per_group, torch.get_num_threads())
        self.jobs = _jobs(batch, dim, chan_per_group, self.lanes)
        self.n_jobs = len(self.jobs[0])


def _block_width(batch: int, dim: int, chan_per_group: int, threads: int) -> int:
    """Channels per job: LANES, or TILE when the narrower blocks share the work among the threads clearly
    better (a makespan 10% shorter). At (1, 96, 16, 16384) on 2 threads, interleaved runs: forward three
    32-channel blocks 6.0-6.6 ms, six 16-channel ones 4.9 ms; backward 16.6 -> 14.1 and 14.0 -> 11.9 ms (its
    TILE-wide kernel, see _backward_kernel). Where 32 balances, 16 measured 8% slower in the forward and from
    22% faster (one thread) to 31% slower (two) in the backward on this shared VM, so LANES stays there."""
    def makespan(width: int) -> float:
        return -(-len(_jobs(batch, dim, chan_per_group, width)[0]) // threads) * width

    return TILE if makespan(TILE) * 1.1 < makespan(LANES) else LANES


_POOL: tuple[int, ThreadPoolExecutor] | None = None  # (owning process id, pool)


def _workers(n_jobs: int) -> int:
    return max(1, min(torch.get_num_threads(), n_jobs))


def _run_jobs(kernel, n_jobs: int, workers: int, *args, with_tid: bool = False) -> None:
    """Run ``kernel(lo, hi, [worker,] *args)`` over ``workers`` contiguous job ranges, one per thread.

    The kernels release the GIL (nogil), so plain Python threads run them in parallel. We use this rather
    than numba's parallel=True: numba's OpenMP pool and PyTorch's spin-wait against each other on a
    machine this size (measured: a tiny torch reduction right after a numba parallel region took 24 ms).
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


def scan_forward(plan: _Plan, save: bool) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Run the forward kernel: out (b, d, L) fp32 laid out as u, last state (b, d, N), and with ``save`` what
    the backward needs: the chunk-start states and, with z, the output before the gate (as mamba_ssm's kernel
    saves it; the backward's state recomputation then has one load, multiply-add and store less per state and
    step)."""
    batch, dim, seqlen, d_state = plan.shape
    out, out_np, plan.strides[4] = _new_sequence(batch, dim, seqlen, plan.strides[0])
    last = torch.empty(batch, dim, d_state)
    n_segments = -(-seqlen // (CHUNK * CKPT_EVERY))
    ckpt = torch.empty(batch, n_segments, d_state, dim) if save else torch.empty(0, 0, 0, 0)
    if save and plan.has_z:
        y, y_np, plan.strides[7] = _new_sequence(batch, dim, seqlen, plan.strides[0])
    else:
        y, y_np = torch.empty(0), np.zeros(0, np.float32)
    _run_jobs(_scan_fwd, plan.n_jobs, _workers(plan.n_jobs), *plan.args, *plan.jobs, plan.cpg_b, plan.cpg_c,
              plan.lanes, seqlen, out_np, last.numpy(), ckpt.numpy(), save, y_np)
    return out, last, (ckpt, y)


def scan_backward(plan: _Plan, saved: tuple[torch.Tensor, torch.Tensor], gout: torch.Tensor,
                  glast: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
    """Run the backward kernel for output gradient ``gout`` (b, d, L) and last-state gradient ``glast``
    (b, d, N) or None; returns fp32 gradients keyed by argument name (z: None when absent), those of u, delta
    and z laid out as their inputs (see _new_sequence)."""
    batch, dim, seqlen, d_state = plan.shape
    workers = _workers(plan.n_jobs)
    grads, flats = {"z": None}, {"z": np.zeros(0, np.float32)}
    for row, name in enumerate(("u", "delta", "z")):
        if name != "z" or plan.has_z:
            grads[name], flats[name], plan.strides[4 + row] = _new_sequence(batch, dim, seqlen, plan.strides[row])
    # per-worker partial sums in NumPy (zero pages from the OS; a torch fill would be a parallel op)
    parts = {"A": np.zeros((workers, dim, d_state), np.float32), "D": np.zeros((workers, dim), np.float32),
             "delta_bias": np.zeros((workers, dim), np.float32)}
    for name, sel, fix in (("B", plan.Bsel, plan.Bfix), ("C", plan.Csel, plan.Cfix)):
        parts[name] = np.zeros((workers, *(sel.shape if sel.size else fix.shape)), np.float32)
    empty5, empty3 = np.zeros((0,) * 5, np.float32), np.zeros((0,) * 3, np.float32)
    b_sel, c_sel = bool(plan.Bsel.size), bool(plan.Csel.size)
    glast_np = empty3 if glast is None else _f32(glast)
    gout_flat, plan.strides[3] = _sequence(gout)
    ckpt, y = saved
    y_flat = y.as_strided((y.numel(),), (1,)).numpy()  # laid out as the forward's out (strides[7])
    _run_jobs(_scan_bwd[plan.lanes], plan.n_jobs, workers, *plan.args, gout_flat, glast_np, ckpt.numpy(), y_flat,
              *plan.jobs, plan.cpg_b, plan.cpg_c, plan.lanes, seqlen, flats["u"], flats["delta"], flats["z"],
              parts["A"], parts["D"], parts["delta_bias"],
              parts["B"] if b_sel else empty5, empty3 if b_sel else parts["B"],
              parts["C"] if c_sel else empty5, empty3 if c_sel else parts["C"],
              with_tid=True)
    for name, part in parts.items():
        total = torch.from_numpy(functools.reduce(np.add, part))
        grads[name] = total
    return grads


_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        plan = _Plan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        out, last, saved = scan_forward(plan, save=any(ctx.needs_input_grad))
        ctx.plan, ctx.saved = plan, saved
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        # the plan reads the inputs' memory in place; saving them lets autograd refuse a backward after an
        # in-place change to any of them, as it does for torch's own ops
        ctx.save_for_backward(*(t for t in inputs if t is not None))
        ctx.like = [(t.dtype, t.shape) if t is not None else None for t in inputs]
        ctx.set_materialize_grads(False)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, gout, glast):
        if gout is None and glast is None:
            return (None,) * 9
        ctx.saved_tensors  # noqa: B018  (raises if an input was modified in place since the forward)
        batch, dim, seqlen, _ = ctx.plan.shape
        gout = torch.zeros(batch, dim, seqlen) if gout is None else gout
        grads = scan_backward(ctx.plan, ctx.saved, gout, glast)
        result = []
        for name, like, needed in zip(_NAMES, ctx.like, ctx.needs_input_grad, strict=False):
            g = grads[name]
            result.append(g.reshape(like[1]).to(like[0]) if needed and like is not None else None)
        return (*result, None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Selective scan with the fused numba kernels; shapes and semantics as medssm.ops.selective_scan."""
    out, last = _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last) if return_last_state else out
