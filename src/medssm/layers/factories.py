"""Layer factories by ``spatial_dims``: convolutions, norms, activations, pooling and dropout.

Each factory checks ``spatial_dims`` once (``conventions.check_spatial_dims``: 1, 2 or 3, else a ValueError
naming spatial_dims) and passes every other argument unchanged to the torch constructor, so a layer built
here is the layer (and the initialisation) that calling the constructor directly gives. Model files use these
instead of their own ``{1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}`` tables.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ..conventions import check_spatial_dims
from .norm import ChannelsFirstLayerNorm

# Constructors that block classes take as arguments: a norm called with the channel count (acting on the last
# axis, e.g. nn.LayerNorm) and an activation called with no argument (e.g. nn.GELU).
NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_POOL = {
    "max": {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d},
    "avg": {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d},
    "adaptive_max": {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d},
    "adaptive_avg": {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d},
}
_CHANNEL_DROPOUT = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}
_ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "prelu": nn.PReLU, "gelu": nn.GELU, "silu": nn.SiLU,
    "swish": nn.SiLU, "elu": nn.ELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity,
}
NORMS = ("batch", "instance", "group", "layer", "layer_channels_first")


def _lookup(kind: str, table: dict, what: str):
    if kind not in table:
        raise ValueError(f"{what} must be one of {tuple(table)}, got {kind!r}")
    return table[kind]


def conv_nd(spatial_dims: int, in_channels: int, out_channels: int, kernel_size, **kwargs) -> nn.Module:
    """``nn.Conv{spatial_dims}d(in_channels, out_channels, kernel_size, **kwargs)``: (batch, in_channels,
    *spatial) -> (batch, out_channels, *spatial')."""
    return _CONV[check_spatial_dims(spatial_dims)](in_channels, out_channels, kernel_size, **kwargs)


def conv_transpose_nd(spatial_dims: int, in_channels: int, out_channels: int, kernel_size, **kwargs) -> nn.Module:
    """``nn.ConvTranspose{spatial_dims}d(in_channels, out_channels, kernel_size, **kwargs)``."""
    return _CONV_TRANSPOSE[check_spatial_dims(spatial_dims)](in_channels, out_channels, kernel_size, **kwargs)


def norm_nd(name: str, spatial_dims: int, channels: int, **kwargs) -> nn.Module:
    """A norm over ``channels`` by name, for channels-first tensors (batch, channels, *spatial) except "layer".

    "batch": BatchNorm{d}d; "instance": InstanceNorm{d}d (torch's defaults: no affine parameters);
    "group": GroupNorm(num_groups, channels) (``num_groups`` keyword, default 8 or channels if fewer);
    "layer": nn.LayerNorm(channels), acting on the LAST axis (tokens (..., channels));
    "layer_channels_first": :class:`ChannelsFirstLayerNorm`, LayerNorm over axis 1 of (batch, channels, ...).
    ``kwargs`` go to the constructor (eps, affine, ...).
    """
    spatial_dims = check_spatial_dims(spatial_dims)
    if name not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {name!r}")
    if name == "batch":
        return _BATCH_NORM[spatial_dims](channels, **kwargs)
    if name == "instance":
        return _INSTANCE_NORM[spatial_dims](channels, **kwargs)
    if name == "group":
        num_groups = kwargs.pop("num_groups", min(8, channels))
        return nn.GroupNorm(num_groups, channels, **kwargs)
    if name == "layer":
        return nn.LayerNorm(channels, **kwargs)
    return ChannelsFirstLayerNorm(channels, **kwargs)


def activation(name: str, **kwargs) -> nn.Module:
    """An activation module by name (relu, leaky_relu, prelu, gelu, silu/swish, elu, tanh, sigmoid,
    identity); ``kwargs`` go to its constructor (e.g. ``negative_slope``, ``inplace``)."""
    return _lookup(name, _ACTIVATIONS, "activation")(**kwargs)


def pool_nd(kind: str, spatial_dims: int, *args, **kwargs) -> nn.Module:
    """A pooling module: kind "max", "avg", "adaptive_max" or "adaptive_avg" in ``spatial_dims`` dims;
    ``args``/``kwargs`` go to the constructor (kernel_size, stride, ... or output_size)."""
    table = _lookup(kind, _POOL, "pool kind")
    return table[check_spatial_dims(spatial_dims)](*args, **kwargs)


def dropout_nd(spatial_dims: int, p: float = 0.5, channelwise: bool = False) -> nn.Module:
    """Dropout for (batch, channels, *spatial): element-wise ``nn.Dropout(p)``, or with ``channelwise`` whole
    channels zeroed (``nn.Dropout{spatial_dims}d``)."""
    spatial_dims = check_spatial_dims(spatial_dims)
    return _CHANNEL_DROPOUT[spatial_dims](p) if channelwise else nn.Dropout(p)
