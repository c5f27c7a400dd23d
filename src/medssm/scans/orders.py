"""Index arithmetic that builds scan orders, with no Python loop over tokens.

Every builder starts from ``index_grid(shape)``, the grid whose entries are the flat (row-major) indices of
its own positions, rearranges it with views, permutes, flips and masks, and flattens it: the result at
position i is the flat grid index read at step i of the sequence. Loops run over axes only (at most 3).
"""

from __future__ import annotations

import math

import torch


def index_grid(shape: tuple[int, ...]) -> torch.Tensor:
    """The flat row-major index of every grid position: LongTensor of shape ``shape``."""
    return torch.arange(math.prod(shape)).view(shape)


def column_axes(spatial_dims: int) -> tuple[int, ...]:
    """Axis order with the last two axes swapped: (W, H) in 2D, (D, W, H) in 3D; (L,) in 1D."""
    if spatial_dims < 2:
        return tuple(range(spatial_dims))
    return tuple(range(spatial_dims - 2)) + (spatial_dims - 1, spatial_dims - 2)


def rotated_axes(spatial_dims: int) -> list[tuple[int, ...]]:
    """The cyclic rotations of the axes, so that each axis is the fastest once.

    2D: (H, W), (W, H); 3D: (D, H, W), (H, W, D), (W, D, H); 1D: (L,).
    """
    axes = tuple(range(spatial_dims))
    return [axes[r:] + axes[:r] for r in range(spatial_dims)]


def axis_order(grid: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """Visit ``grid`` with axes[0] slowest and axes[-1] fastest: (T,)."""
    return grid.permute(axes).reshape(-1)


def snake_order(grid: torch.Tensor) -> torch.Tensor:
    """Boustrophedon through ``grid`` (last axis fastest) so consecutive tokens are grid neighbours: (T,).

    Odd rows run backwards; in 3D every odd slice runs the whole 2D snake backwards, so the sequence
    continues from the end of one slice into the adjacent token of the next.
    """
    seq = grid
    while seq.dim() > 1:
        odd_rows = (torch.arange(seq.shape[-2]) % 2 == 1).unsqueeze(-1)
        seq = torch.where(odd_rows, seq.flip(-1), seq).flatten(-2)
    return seq


def blocked_order(grid: torch.Tensor, size: int, phase_first: bool) -> torch.Tensor:
    """Visit ``grid`` in blocks of ``size`` along every axis, partial blocks at the high borders: (T,).

    Coordinate i along an axis splits into a block index i // size and a phase i % size. Window order
    (``phase_first=False``): blocks in row-major order, row-major inside each block. Atrous order
    (``phase_first=True``): phases in row-major order, each phase's sub-grid (stride ``size``) in row-major
    order. The grid is padded with -1 up to a multiple of ``size`` and the padding dropped after flattening.
    """
    blocks = [math.ceil(n / size) for n in grid.shape]
    padded = grid.new_full([b * size for b in blocks], -1)
    padded[tuple(slice(0, n) for n in grid.shape)] = grid
    split = padded.view([s for b in blocks for s in (b, size)])  # (b0, size, b1, size, ...)
    outer, inner = list(range(0, split.dim(), 2)), list(range(1, split.dim(), 2))
    seq = split.permute(inner + outer if phase_first else outer + inner).reshape(-1)
    return seq[seq >= 0]


def reverse_within_windows(seq: torch.Tensor, window: int) -> torch.Tensor:
    """Reverse each run of ``window`` consecutive entries of ``seq`` (the last run may be shorter): (T,)."""
    position = torch.arange(seq.numel())
    start = position // window * window
    end = (start + window).clamp(max=seq.numel())
    return seq[start + end - 1 - position]


def with_reversed(orders: torch.Tensor) -> torch.Tensor:
    """Append every order read backwards: (K, T) -> (2K, T), the reverses after the originals."""
    return torch.cat([orders, orders.flip(-1)])


def stripe_snake_order(grid: torch.Tensor, width: int, shift: int = 0) -> torch.Tensor:
    """MaIR's nested S-shaped scan of ``grid`` (last axis fastest): (T,).

    The last axis is cut into stripes of ``width`` columns (the first ``shift`` columns, when ``shift`` > 0,
    form a narrower first stripe; the last stripe may be partial). Stripes are visited left to right, even
    stripes top to bottom and odd stripes bottom to top; inside a stripe the k-th visited row runs left to
    right for even k and right to left for odd k (a boustrophedon of short rows). Leading axes (3D: depth)
    are chained like :func:`snake_order`: every odd slice runs its whole sequence backwards.
    """
    *lead, height, columns = grid.shape
    left = (width - shift) % width  # padding that turns the narrow first stripe into a full one
    stripes = math.ceil((left + columns) / width)
    padded = grid.new_full((*lead, height, stripes * width), -1)
    padded[..., left:left + columns] = grid
    seq = padded.unflatten(-1, (stripes, width)).movedim(-2, -3)  # (*lead, stripes, height, width)
    odd_stripes = (torch.arange(stripes) % 2 == 1)[:, None, None]
    seq = torch.where(odd_stripes, seq.flip(-2), seq)
    odd_rows = (torch.arange(height) % 2 == 1)[:, None]
    seq = torch.where(odd_rows, seq.flip(-1), seq).flatten(-3)
    while seq.dim() > 1:
        odd_slices = (torch.arange(seq.shape[-2]) % 2 == 1).unsqueeze(-1)
        seq = torch.where(odd_slices, seq.flip(-1), seq).flatten(-2)
    return seq[seq >= 0]
