"""Numba kernel file: the "cpu" kernels' SIMD building blocks.

numba has no vector math library and no vector type, so this holds what the kernels need of both: a
polynomial exp, sigmoid and softplus that LLVM vectorises (relative error ~2e-7), and numba intrinsics
that emit LLVM vector IR directly: TILE x TILE tile copies and transposes (optionally with streaming
stores), a store fence, row prefetches, and sums of TILE rows across lanes. Also the exp throughput kernel
that ``medssm bench scan`` measures.
"""

from __future__ import annotations

import numpy as np

from .._numba_env import numba
from .sizes import LANES, TILE

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693145751953125)  # ln 2 split so that k * _LN2_HI is exact for |k| < 2**11
_LN2_LO = np.float32(1.428606765330187e-06)
_EXP_LO = np.float32(-87.0)  # exp(-87) ~ 1.6e-38: still a normal float, below any state's resolution
_EXP_HI = np.float32(88.0)
ONE = np.float32(1.0)
_HALF = np.float32(0.5)
ZERO = np.float32(0.0)
_P2 = np.float32(1.0 / 2.0)
_P3 = np.float32(1.0 / 6.0)
_P4 = np.float32(1.0 / 24.0)
_P5 = np.float32(1.0 / 120.0)
_P6 = np.float32(1.0 / 720.0)
_I127 = np.int32(127)
_TWO = np.float32(2.0)
_L3, _L5, _L7, _L9 = np.float32(1 / 3), np.float32(1 / 5), np.float32(1 / 7), np.float32(1 / 9)
_L11, _L13, _L15 = np.float32(1 / 11), np.float32(1 / 13), np.float32(1 / 15)

# Helpers are inlined into the kernels that call them; kernels release the GIL for the worker threads.
# error_model="numpy": no ZeroDivisionError branch per division, which would block vectorisation.
njit_inline = numba.njit(cache=True, fastmath=True, inline="always", error_model="numpy")
njit_kernel = numba.njit(cache=True, fastmath=True, nogil=True, error_model="numpy")


@numba.extending.intrinsic
def _int_bits_as_float(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (free; lets LLVM build 2**k in vector registers)."""
    from llvmlite import ir

    sig = numba.types.float32(numba.types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit_inline
def exp(x):
    """exp of a float32, vectorisable: clamp, k = round(x / ln 2), exp(r) by Taylor, scale by 2**k."""
    x = min(max(x, _EXP_LO), _EXP_HI)
    kf = np.floor(x * _LOG2E + _HALF)
    r = (x - kf * _LN2_HI) - kf * _LN2_LO
    p = _P6
    p = p * r + _P5
    p = p * r + _P4
    p = p * r + _P3
    p = p * r + _P2
    p = p * r + ONE
    p = p * r + ONE
    return p * _int_bits_as_float((np.int32(kf) + _I127) << np.int32(23))


@njit_inline
def sigmoid(x):
    return ONE / (ONE + exp(-x))


@njit_inline
def softplus(x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), with log1p(e) = 2 atanh(e / (2 + e)) as an odd series in
    s = e / (2 + e) <= 1/3 (eight terms: error < 1e-9). Vectorisable, unlike a call to log1p."""
    e = exp(-abs(x))
    return _softplus_tail(x, e / (_TWO + e))


@njit_inline
def softplus_sigmoid(x):
    """(softplus(x), sigmoid(x)) from one exp and one division: with e = exp(-|x|) and q = 1 / ((1 + e)(2 + e)),
    softplus's s = e / (2 + e) = e (1 + e) q and sigmoid(x) = (1 or e) / (1 + e) = (1 or e) (2 + e) q."""
    e = exp(-abs(x))
    q = ONE / ((ONE + e) * (_TWO + e))
    sg = (ONE if x >= ZERO else e) * (_TWO + e) * q
    return _softplus_tail(x, e * (ONE + e) * q), sg


@njit_inline
def _softplus_tail(x, s):
    """softplus(x) given s = e / (2 + e), e = exp(-|x|): see softplus."""
    s2 = s * s
    p = _L15
    p = p * s2 + _L13
    p = p * s2 + _L11
    p = p * s2 + _L9
    p = p * s2 + _L7
    p = p * s2 + _L5
    p = p * s2 + _L3
    p = p * s2 + ONE
    return max(x, ZERO) + _TWO * s * p


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
    two-input shuffles, TILE row stores. numba has no vector type, and element-wise transpose loops ran about
    10x slower than this.

    With ``streaming`` the row stores are non-temporal: each writes a whole cache line without reading it
    first and without keeping it in cache. dst's rows must then be 64-byte aligned (a misaligned one faults),
    and the writing thread must call store_fence before others read them."""

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

    move.__name__ = move.__qualname__ = ("transpose_tile" if transpose else "copy_tile") + (
        "_streaming" if streaming else "")
    return numba.extending.intrinsic(move)


@numba.extending.intrinsic
def store_fence(typingctx):
    """sfence: orders this thread's non-temporal stores before everything it does after (x86)."""
    from llvmlite import ir

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.x86.sse.sfence", fnty=ir.FunctionType(ir.VoidType(), []))
        builder.call(fn, [])
        return context.get_dummy_value()

    return numba.types.void(), codegen


@numba.extending.intrinsic
def prefetch_rows(typingctx, src, at, stride):
    """Prefetch src.flat[at + i * stride] for i < TILE (a tile's rows) into cache: llvm.prefetch, read, locality
    2 (prefetcht1: into L2, not L1, where the backward's 130 KB of segment buffers live; it measured faster than
    prefetcht0). A prefetch never faults, so the rows may lie outside the array (past either end)."""
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

        add_products.__name__ = add_products.__qualname__ = "add_row_product_sums"
        return numba.extending.intrinsic(add_products)

    def add_sums(typingctx, src, src_at, src_stride, dst, dst_at):
        return add(typingctx, src, src_at, src_stride, dst, dst_at)

    add_sums.__name__ = add_sums.__qualname__ = "add_row_sums"
    return numba.extending.intrinsic(add_sums)


add_row_sums = _row_summer(product=False)
add_row_product_sums = _row_summer(product=True)
add_tile_row_sums = _row_summer(product=False, width=TILE)  # for the backward's TILE-lane blocks
add_tile_row_product_sums = _row_summer(product=True, width=TILE)


transpose_tile = _tile_mover(transpose=True)
copy_tile = _tile_mover(transpose=False)
transpose_tile_streaming = _tile_mover(transpose=True, streaming=True)
copy_tile_streaming = _tile_mover(transpose=False, streaming=True)



@njit_kernel
def exp_rows(job_lo, job_hi, x, out, repeats):
    """out[i] = exp(x[i]) with the kernels' polynomial exp for rows [job_lo, job_hi), ``repeats`` times:
    the machine's vectorised exp throughput for ``medssm bench scan``."""
    for _ in range(repeats):
        for row in range(job_lo, job_hi):
            for i in range(x.shape[1]):
                out[row, i] = exp(x[row, i])
