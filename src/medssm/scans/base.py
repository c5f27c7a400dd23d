"""The scan-route interface, its gather/scatter machinery and the route registry.

A route turns a grid of tokens, shape (L,), (H, W) or (D, H, W), into K sequences of T = prod(shape)
tokens each and back. ``orders(shape)`` (K, T) says, for position i of sequence k, which flat row-major grid
index it reads; every row is a permutation of range(T). Orders are built once per (shape, device) with index
arithmetic and cached on the route instance; gather and scatter are then a single ``torch.gather`` each.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar, TypeVar

import torch

_DeviceLike = torch.device | str | None
_Route = TypeVar("_Route", bound="ScanRoute")


class _PermuteTokens(torch.autograd.Function):
    """out[b, k, c, i] = y[b, k, c, index[k, i]] for (batch, K, channels, T) tensors and permutation rows.

    Its gradient is the same gather with the inverse permutation, which is much cheaper than the
    scatter-add that autograd would use for ``torch.gather``.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index, inverse)
        return y.gather(-1, index[None, :, None, :].expand(y.shape))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        index, inverse = ctx.saved_tensors
        return _PermuteTokens.apply(grad, inverse, index), None, None


class _MergeTokens(torch.autograd.Function):
    """out[b, c, j] = sum_k y[b, k, c, inverse[k, j]] for (batch, K, channels, T) sequences: each sequence put
    back on the grid and the K grids summed, one gather per route added in place.

    Scattering all K at once would write a (batch, K, channels, T) tensor only to read it again for the sum;
    on CPU a fresh buffer that large costs more in first-touch page faults than the gathers themselves (3D
    32^3, K=6: 31 ms -> 9 ms). The gradient is the routes' gather of the grid gradient.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index, inverse)
        batch, num_routes, channels, length = y.shape
        out = y[:, 0].gather(-1, inverse[0].expand(batch, channels, length))
        for k in range(1, num_routes):
            out.add_(y[:, k].gather(-1, inverse[k].expand(batch, channels, length)))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        index, inverse = ctx.saved_tensors
        batch, channels, length = grad.shape
        grids = grad.reshape(batch, 1, channels, length).expand(batch, index.shape[0], channels, length)
        return _PermuteTokens.apply(grids, index, inverse), None, None


class ScanRoute:
    """How an N-d token grid becomes K sequences and back. Subclasses give ``_num_orders`` and ``_build``.

    Shapes: x (batch, channels, *spatial) -> ``gather`` -> (batch, K, channels, T) -> ``scatter`` ->
    (batch, K, channels, *spatial); ``merge`` sums the K grids -> (batch, channels, *spatial).
    The cached order tensors are shared: treat them as read-only.
    """

    name: ClassVar[str] = ""
    spatial_dims: ClassVar[tuple[int, ...]] = (1, 2, 3)

    def __init__(self) -> None:
        self._orders: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}
        self._inverse: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}

    def _num_orders(self, spatial_dims: int) -> int:
        raise NotImplementedError

    def _build(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The orders for ``shape`` on the CPU: LongTensor (K, T)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def num_orders(self, spatial_dims: int) -> int:
        """K, the number of sequences this route makes from a grid with ``spatial_dims`` axes."""
        self._check_dims(spatial_dims)
        return self._num_orders(spatial_dims)

    def orders(self, shape: tuple[int, ...], device: _DeviceLike = None) -> torch.Tensor:
        """LongTensor (K, T): row k lists the flat grid index read at each position of sequence k. Cached."""
        key = self._key(shape, device)
        if key not in self._orders:
            orders = self._build(key[0])
            expected = (self._num_orders(len(key[0])), math.prod(key[0]))
            if tuple(orders.shape) != expected:  # a broken subclass, not a user error
                raise RuntimeError(f"{self!r} built orders of shape {tuple(orders.shape)}, expected {expected}")
            self._orders[key] = orders.to(key[1])
        return self._orders[key]

    def inverse_orders(self, shape: tuple[int, ...], device: _DeviceLike = None) -> torch.Tensor:
        """LongTensor (K, T): entry [k, j] is the position in sequence k that reads grid index j. Cached."""
        key = self._key(shape, device)
        if key not in self._inverse:
            self._inverse[key] = self.orders(*key).argsort(-1)
        return self._inverse[key]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, channels, *spatial) -> sequences (batch, K, channels, T), in one gather."""
        if x.dim() < 3:
            raise ValueError(f"x must have shape (batch, channels, *spatial), got {tuple(x.shape)}")
        shape = tuple(x.shape[2:])
        index, inverse = self.orders(shape, x.device), self.inverse_orders(shape, x.device)
        batch, channels = x.shape[:2]
        grids = x.reshape(batch, 1, channels, -1).expand(batch, index.shape[0], channels, index.shape[1])
        return _PermuteTokens.apply(grids, index, inverse)

    def scatter(self, y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Sequences y (batch, K, channels, T) -> (batch, K, channels, *shape), each put back on the grid."""
        shape = tuple(shape)
        index, inverse = self._sequence_orders(y, shape)
        return _PermuteTokens.apply(y, inverse, index).unflatten(-1, shape)

    def merge(self, y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Sequences y (batch, K, channels, T) -> the sum of their grids (batch, channels, *shape); equals
        ``scatter(y, shape).sum(1)`` without materialising the K grids."""
        shape = tuple(shape)
        index, inverse = self._sequence_orders(y, shape)
        return _MergeTokens.apply(y, index, inverse).unflatten(-1, shape)

    def _sequence_orders(self, y: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(orders, inverse orders) for sequences ``y`` of a grid ``shape``; ValueError if y does not fit."""
        index, inverse = self.orders(shape, y.device), self.inverse_orders(shape, y.device)
        if y.dim() != 4 or (y.shape[1], y.shape[3]) != tuple(index.shape):
            raise ValueError(f"{self.name!r} on a grid {shape} takes sequences (batch, {index.shape[0]}, "
                             f"channels, {index.shape[1]}), got {tuple(y.shape)}")
        return index, inverse

    def _check_dims(self, spatial_dims: int) -> None:
        if spatial_dims not in self.spatial_dims:
            raise ValueError(f"scan route {self.name!r} supports spatial_dims in {self.spatial_dims}, "
                             f"got {spatial_dims}")

    def _key(self, shape: tuple[int, ...], device: _DeviceLike) -> tuple[tuple[int, ...], torch.device]:
        shape = tuple(int(n) for n in shape)
        if any(n < 1 for n in shape):
            raise ValueError(f"grid sizes must be positive, got {shape}")
        self._check_dims(len(shape))
        return shape, torch.device("cpu" if device is None else device)


_ROUTES: dict[str, type[ScanRoute]] = {}


def register_route(name: str) -> Callable[[type[_Route]], type[_Route]]:
    """Class decorator: register a ScanRoute subclass under ``name`` (and set its ``name``)."""

    def add(cls: type[_Route]) -> type[_Route]:
        if name in _ROUTES:
            raise ValueError(f"scan route {name!r} is already registered")
        cls.name = name
        _ROUTES[name] = cls
        return cls

    return add


def get_route(name: str, **kwargs) -> ScanRoute:
    """A new instance of the route registered as ``name``, built with ``kwargs``."""
    if name not in _ROUTES:
        raise ValueError(f"unknown scan route {name!r}; known routes: {', '.join(list_routes())}")
    return _ROUTES[name](**kwargs)


def list_routes() -> list[str]:
    """The names of all registered scan routes, sorted."""
    return sorted(_ROUTES)
