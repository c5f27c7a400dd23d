"""A sequence mixer applied to a grid's tokens in a scan route's orderings (shared by LightM-UNet and U-Mamba).

LightM-UNet's RVM layer and U-Mamba's Mamba layer flatten a grid in raster order and run one ``Mamba`` over
the tokens. :func:`mix_along_route` generalises the flattening to any route of ``medssm.scans``: the mixer
(the same weights) runs over each of the route's K orderings, each output is put back on the grid, and the
K grids are averaged. With ``route="raster"`` (K = 1, the identity order) this is exactly the released
flatten -> Mamba -> unflatten; for K > 1 the parameters are unchanged and only the scan order differs, so
``route=`` is a clean ablation of the scan order for these networks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..scans import ScanRoute, get_route


def build_route(route: str | ScanRoute, spatial_dims: int) -> ScanRoute:
    """A route by name (or the instance itself), checked to support ``spatial_dims`` (ValueError if not)."""
    route = get_route(route) if isinstance(route, str) else route
    if not isinstance(route, ScanRoute):
        raise ValueError(f"route must be a route name or a ScanRoute, got {type(route).__name__}")
    route.num_orders(spatial_dims)  # raises a ValueError naming the route when it lacks spatial_dims
    return route


def mix_along_route(mixer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    route: ScanRoute) -> torch.Tensor:
    """x (batch, C, *spatial) -> (batch, C, *spatial).

    ``mixer`` maps tokens (n, T, C) -> (n, T, C) (e.g. a Mamba); it runs once on the K sequences of the route
    stacked along the batch, (batch * K, T, C); the K outputs are scattered back to the grid and averaged.
    """
    batch, channels, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    seqs = route.gather(x)  # (batch, K, C, T)
    num_routes, length = seqs.shape[1], seqs.shape[-1]
    y = mixer(seqs.reshape(batch * num_routes, channels, length).transpose(1, 2))  # (batch * K, T, C)
    y = y.transpose(1, 2).reshape(batch, num_routes, channels, length)
    merged = route.merge(y, spatial)
    return merged if num_routes == 1 else merged / num_routes
