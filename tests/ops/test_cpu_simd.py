"""The "cpu" kernels' vector intrinsics (medssm.ops.cpu.simd) and the chunk stores that use them."""

from __future__ import annotations

import numpy as np
import pytest

from medssm.ops._numba_env import numba
from medssm.ops.cpu import chunks, simd
from medssm.ops.cpu.sizes import LANES, TILE


def test_transpose_tile_moves_one_tile_between_any_offsets():
    @numba.njit
    def move(src, src_at, src_stride, dst, dst_at, dst_stride):
        simd.transpose_tile(src, src_at, src_stride, dst, dst_at, dst_stride)

    src = np.arange(2 * 40 * 50, dtype=np.float32).reshape(2, 40, 50)
    dst = np.zeros((30, 45), np.float32)
    move(src, (1 * 40 + 3) * 50 + 5, 50, dst, 2 * 45 + 7, 45)  # src[1, 3:, 5:] -> dst[2:, 7:], transposed
    expected = np.zeros_like(dst)
    expected[2:2 + TILE, 7:7 + TILE] = src[1, 3:3 + TILE, 5:5 + TILE].T
    np.testing.assert_array_equal(dst, expected)  # everything outside the tile untouched


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("offset", [0, 16, 5])  # 0 and 16 floats: whole tiles go out as streaming stores
def test_store_lanes_writes_the_same_with_and_without_streaming_stores(channels_last, offset):
    """store_lanes uses non-temporal stores only where every row of a tile is 64-byte aligned."""
    lanes, steps, dim, seqlen = LANES, TILE, 48, 64  # strides of 48 or 64 floats: aligned rows
    src = np.random.default_rng(0).random((steps, lanes), dtype=np.float32)
    buf = np.zeros(dim * seqlen + 64, np.float32)
    base = (-buf.ctypes.data // 4) % 16  # the first 64-byte aligned element of buf
    flat = buf[base:]
    s_c, s_t = (1, dim) if channels_last else (seqlen, 1)
    nl = 35 - 32 if offset == 5 else lanes  # a ragged block too: 3 lanes, all element by element
    chunks.store_lanes(src, flat, offset, s_c, s_t, nl, steps)
    expected = np.zeros_like(flat)
    for lane in range(nl):
        for j in range(steps):
            expected[offset + lane * s_c + j * s_t] = src[j, lane]
    np.testing.assert_array_equal(flat, expected)


@pytest.mark.parametrize("product", [False, True])
@pytest.mark.parametrize("wide", [True, False])
def test_add_row_sums_adds_each_rows_lane_sum_and_nothing_else(product, wide):
    """The backward's B/C gradient sums: TILE rows of LANES (or, in its narrow blocks, TILE) lanes, or of the
    products of two such rows, any row stride and offsets."""

    @numba.njit
    def add_row_sums(src, src_at, src_stride, dst, dst_at):
        if wide:
            simd.add_row_sums(src, src_at, src_stride, dst, dst_at)
        else:
            simd.add_tile_row_sums(src, src_at, src_stride, dst, dst_at)

    @numba.njit
    def add_row_product_sums(src, src_at, other_at, src_stride, dst, dst_at):
        if wide:
            simd.add_row_product_sums(src, src_at, other_at, src_stride, dst, dst_at)
        else:
            simd.add_tile_row_product_sums(src, src_at, other_at, src_stride, dst, dst_at)

    lanes = LANES if wide else TILE
    rows, stride, at, other = TILE, LANES + 9, 7, 3
    rng = np.random.default_rng(0)
    src = rng.integers(-50, 50, (rows * stride + at,)).astype(np.float32)  # integers: every sum is exact
    dst = rng.integers(-50, 50, (2, 30)).astype(np.float32)
    expected = dst.copy()
    row = [src[at + i * stride:at + i * stride + lanes] for i in range(rows)]
    if product:
        row = [r * src[other + i * stride:other + i * stride + lanes] for i, r in enumerate(row)]
        add_row_product_sums(src, at, other, stride, dst, 30 + 3)
    else:
        add_row_sums(src, at, stride, dst, 30 + 3)
    expected[1, 3:3 + rows] += [r.sum() for r in row]
    np.testing.assert_array_equal(dst, expected)
