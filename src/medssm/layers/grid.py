"""Helpers for channels-first token grids (batch, channels, *spatial): the input check, applying a
last-axis layer to the channel axis, and raster-order flattening to tokens and back."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def check_grid(x: torch.Tensor, spatial_dims: int, channels: int) -> None:
    """Raise ValueError unless x is (batch, channels, *spatial) with ``spatial_dims`` spatial axes."""
    if not isinstance(x, torch.Tensor) or x.dim() != spatial_dims + 2 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (batch, {channels}, *spatial) with {spatial_dims} spatial dims, "
                         f"got {got}")


def channels_last(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply fn (acting on the last axis) to the channel axis of a channels-first tensor."""
    return fn(x.movedim(1, -1)).movedim(-1, 1)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(batch, C, *spatial) -> raster-order tokens (batch, T, C): the last spatial axis varies fastest."""
    return x.flatten(2).transpose(1, 2)


def from_tokens(t: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`to_tokens`: (batch, T, C) -> (batch, C, *spatial)."""
    return t.transpose(1, 2).unflatten(-1, tuple(spatial))
