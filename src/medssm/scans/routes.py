"""The registered scan routes, each named after a paper that uses it.

Examples below are on a 3x4 grid with flat indices ``[[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]``.
"""

from __future__ import annotations

import torch

from .base import ScanRoute, register_route
from .orders import (
    axis_order,
    blocked_order,
    column_axes,
    index_grid,
    reverse_within_windows,
    rotated_axes,
    snake_order,
    stripe_snake_order,
    with_reversed,
)


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _raster(shape: tuple[int, ...]) -> torch.Tensor:
    return index_grid(shape).reshape(-1)


class _OrderAndReverse(ScanRoute):
    """A route of one order (:meth:`_order`) plus, when ``self.reverse``, that order reversed: K = 2, else 1."""

    reverse: bool

    def _order(self, shape: tuple[int, ...]) -> torch.Tensor:
        raise NotImplementedError

    def _num_orders(self, spatial_dims: int) -> int:
        return 2 if self.reverse else 1

    def _build(self, shape: tuple[int, ...]) -> torch.Tensor:
        orders = self._order(shape)[None]
        return with_reversed(orders) if self.reverse else orders


@register_route("raster")
class RasterRoute(ScanRoute):
    """Row-major flattening, K=1 (U-Mamba, Ma et al. 2024, arXiv:2401.04722; LightM-UNet, Liao et al. 2024,
    arXiv:2403.05246). 3x4: ``0 1 2 ... 11``."""

    def _num_orders(self, spatial_dims: int) -> int:
        return 1

    def _build(self, shape: tuple[int, ...]) -> torch.Tensor:
        return _raster(shape)[None]


@register_route("bidirectional")
class BidirectionalRoute(ScanRoute):
    """Raster and reversed raster, K=2 (Vim, Zhu et al. 2024, "Vision Mamba", arXiv:2401.09417)."""

    def _num_orders(self, spatial_dims: int) -> int:
        return 2

    def _build(self, shape: tuple[int, ...]) -> torch.Tensor:
        return with_reversed(_raster(shape)[None])


@register_route("cross")
class CrossRoute(ScanRoute):
    """Cross scan: every axis the fastest once, then all reversed, K = 2 * spatial_dims (VMamba's SS2D,
    Liu et al. 2024, "VMamba: Visual State Space Model", arXiv:2401.10166).

    The axis orders are the cyclic rotations, slowest axis first: 2D (H, W) row-major, (W, H) column-major
    (VMamba's order: row, column, reversed row, reversed column); 3D (D, H, W), (H, W, D), (W, D, H) -- W, D
    and H fastest respectively -- then the three reversed; 1D: forward, reversed.
    3x4 column-major: ``0 4 8 1 5 9 2 6 10 3 7 11``.
    """

    def _num_orders(self, spatial_dims: int) -> int:
        return 2 * spatial_dims

    def _build(self, shape: tuple[int, ...]) -> torch.Tensor:
        grid = index_grid(shape)
        return with_reversed(torch.stack([axis_order(grid, axes) for axes in rotated_axes(len(shape))]))


@register_route("snake")
class SnakeRoute(ScanRoute):
    """Continuous (boustrophedon) scan: consecutive tokens are always grid neighbours (PlainMamba's
    continuous 2D scanning, Yang et al. 2024, "PlainMamba", arXiv:2403.17695).

    2D, K=4: row snake (odd rows right to left), column snake (odd columns bottom to top), then both
    reversed. 3D, K=4: the same two inside each slice, with every odd depth slice running its slice's snake
    backwards, so the path continues into the next slice; then both reversed. 1D, K=2: forward, reversed.
    3x4 row snake: ``0 1 2 3 7 6 5 4 8 9 10 11``; column snake: ``0 4 8 9 5 1 2 6 10 11 7 3``.
    """

    def _num_orders(self, spatial_dims: int) -> int:
        return 2 if spatial_dims == 1 else 4

    def _build(self, shape: tuple[int, ...]) -> torch.Tensor:
        grid = index_grid(shape)
        variants = [tuple(range(len(shape)))] + ([column_axes(len(shape))] if len(shape) > 1 else [])
        return with_reversed(torch.stack([snake_order(grid.permute(axes)) for axes in variants]))


@register_route("local")
class LocalRoute(_OrderAndReverse):
    """Windowed scan: w x w (w x w x w in 3D) windows one after another in row-major order, row-major inside
    each window; border windows are partial when a size is not a multiple of w (LocalMamba, Huang et al.
    2024, "LocalMamba: Visual State Space Model with Windowed Selective Scan", arXiv:2403.09338).

    Args:
        window: w; LocalMamba's default is 7 (its search space also has 2).
        column_first: LocalMamba's column-first variant: windows and tokens inside them in column-major
            order (last two axes swapped).
        reverse: also add the reversed sequence (K=2, LocalMamba's ``flip``), else K=1.

    3x4 with w=2: ``0 1 4 5 | 2 3 6 7 | 8 9 | 10 11``.
    """

    spatial_dims = (2, 3)

    def __init__(self, window: int = 7, column_first: bool = False, reverse: bool = True) -> None:
        super().__init__()
        self.window = _positive("window", window)
        self.column_first = column_first
        self.reverse = reverse

    def extra_repr(self) -> str:
        return f"window={self.window}, column_first={self.column_first}, reverse={self.reverse}"

    def _order(self, shape: tuple[int, ...]) -> torch.Tensor:
        grid = index_grid(shape)
        if self.column_first:
            grid = grid.permute(column_axes(len(shape)))
        return blocked_order(grid, self.window, phase_first=False)


@register_route("dilated")
class DilatedRoute(_OrderAndReverse):
    """Atrous scan with rate r: the sub-grid of tokens with (i % r, j % r) == (0, 0) in row-major order,
    then (0, 1), ..., so each sub-grid is contiguous in the sequence (after AtrousMamba's atrous-window
    scanning, "AtrousMamba: An Atrous-Window Scanning Visual State Space Model for Remote Sensing Change
    Detection", 2025). Works in 1D, 2D and 3D; sizes need not be multiples of r.

    Args:
        rate: r, the stride of the sub-grids.
        reverse: also add the reversed sequence (K=2), else K=1.

    3x4 with r=2: ``0 2 8 10 | 1 3 9 11 | 4 6 | 5 7``.
    """

    def __init__(self, rate: int = 2, reverse: bool = True) -> None:
        super().__init__()
        self.rate = _positive("rate", rate)
        self.reverse = reverse

    def extra_repr(self) -> str:
        return f"rate={self.rate}, reverse={self.reverse}"

    def _order(self, shape: tuple[int, ...]) -> torch.Tensor:
        return blocked_order(index_grid(shape), self.rate, phase_first=True)


@register_route("tri_oriented")
class TriOrientedRoute(ScanRoute):
    """Tri-orientated scan, K=3: raster, reversed raster and inter-slice order, where the first axis (depth)
    is the fastest, so each in-plane position runs through all slices (SegMamba's ToM, Xing et al. 2024,
    "SegMamba", arXiv:2401.13560). Made for 3D (D, H, W); in 2D the rows play the slices.
    """

    spatial_dims = (2, 3)

    def _num_orders(self, spatial_dims: int) -> int:
        return 3

    def _build(self, shape: tuple[int, ...]) -> torch.Tensor:
        grid = index_grid(shape)
        inter_slice = axis_order(grid, tuple(range(1, len(shape))) + (0,))
        return torch.cat([with_reversed(_raster(shape)[None]), inter_slice[None]])


@register_route("local_bidirectional")
class LocalBidirectionalRoute(ScanRoute):
    """Locally bi-directional scan, K=2 (LBMamba, Zhang et al. 2025, "LBMamba: Locally Bi-directional Mamba",
    arXiv:2506.15976): a global forward raster scan, plus a backward scan restricted to windows of ``window``
    consecutive tokens of that raster sequence (each window read backwards, windows in forward order; the
    last one may be shorter), so there is no global backward sweep.

    To recover a global receptive field, LBVim flips the global direction every two layers: a block stack
    with ``alternate=True`` uses ``route.for_layer(i)``, which is ``route.flipped()`` for layers 2, 3, 6, 7,
    ... ``flipped()`` runs the same construction on the reversed raster sequence.

    Args:
        window: w, tokens per local backward window.
        alternate: whether blocks using this route alternate direction every two layers.
        reverse: the global direction is backwards (what ``flipped()`` toggles).

    3x4 with w=5: ``0 1 ... 11`` and ``4 3 2 1 0 | 9 8 7 6 5 | 11 10``.
    """

    def __init__(self, window: int = 8, alternate: bool = True, reverse: bool = False) -> None:
        super().__init__()
        self.window = _positive("window", window)
        self.alternate = alternate
        self.reverse = reverse

    def extra_repr(self) -> str:
        return f"window={self.window}, alternate={self.alternate}, reverse={self.reverse}"

    def flipped(self) -> LocalBidirectionalRoute:
        """The same route with the global direction reversed."""
        return type(self)(self.window, self.alternate, not self.reverse)

    def for_layer(self, layer_index: int) -> LocalBidirectionalRoute:
        """The route layer ``layer_index`` uses: flipped on layers 2, 3 (mod 4) when ``alternate``."""
        return self.flipped() if self.alternate and layer_index // 2 % 2 == 1 else self

    def _num_orders(self, spatial_dims: int) -> int:
        return 2

    def _build(self, shape: tuple[int, ...]) -> torch.Tensor:
        raster = _raster(shape)
        forward = raster.flip(0) if self.reverse else raster
        return torch.stack([forward, reverse_within_windows(forward, self.window)])


@register_route("nested_s")
class NestedSRoute(ScanRoute):
    """Nested S-shaped scan, K=4 (MaIR's NSS, Li et al. 2025, "MaIR: A Locality- and Continuity-Preserving
    Mamba for Image Restoration", arXiv:2412.20066): the grid is cut into stripes of ``width`` columns, each
    stripe is scanned as a boustrophedon of its short rows, and the stripes are chained, even ones top to
    bottom, odd ones bottom to top, so that neighbours stay close in the sequence
    (:func:`~medssm.scans.orders.stripe_snake_order`).

    The four orders are MaIR's (``sscan_4d`` with ``fix_ending=True``): the scan of the grid, the same scan
    of the grid turned by 180 degrees (it starts at the opposite corner: not the first order reversed), and
    both on the transposed grid (stripes of ``width`` rows). In 3D the scan runs inside each (H, W) slice and
    odd slices run backwards, so the path continues into the next slice; "turned" flips every axis.
    Checked against MaIR's released ``sscan_4d`` on every grid up to 11x11 with widths 2, 3, 4, 8 and
    ``shift`` 0 and width // 2 (where ``shift`` is smaller than both sides; narrower grids differ from it
    there, its first stripe being wider than the grid).

    Args:
        width: stripe width w (MaIR's ``scan_len``: 4 for its denoising and SR models, 8 for tiny SR).
        shift: width of a narrower first stripe (MaIR's ``shift_len``: width // 2 on every second block,
            which moves the stripe borders); 0 for none.

    3x4 with w=2: ``0 1 5 4 8 9 | 10 11 7 6 2 3`` (first order).
    """

    spatial_dims = (2, 3)

    def __init__(self, width: int = 4, shift: int = 0) -> None:
        super().__init__()
        self.width = _positive("width", width)
        if isinstance(shift, bool) or not isinstance(shift, int) or not 0 <= shift < width:
            raise ValueError(f"shift must be an integer in [0, width={width}), got {shift!r}")
        self.shift = shift

    def extra_repr(self) -> str:
        return f"width={self.width}, shift={self.shift}"

    def _num_orders(self, spatial_dims: int) -> int:
        return 4

    def _build(self, shape: tuple[int, ...]) -> torch.Tensor:
        grid = index_grid(shape)
        turned = grid.flip(tuple(range(len(shape))))
        columns = column_axes(len(shape))
        return torch.stack([stripe_snake_order(g, self.width, self.shift)
                            for g in (grid, turned, grid.permute(columns), turned.permute(columns))])
