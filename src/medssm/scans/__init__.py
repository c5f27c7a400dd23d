"""Scan routes: how an N-d grid of tokens becomes one or several 1-D sequences and back.

Pick a route by name with ``get_route(name, **kwargs)``; ``list_routes()`` lists them. A route gives
``orders(shape)`` (K, T), ``gather`` (batch, channels, *spatial) -> (batch, K, channels, T), ``scatter`` back
to (batch, K, channels, *spatial), and ``merge`` (the sum over K).
"""

from .base import ScanRoute, get_route, list_routes, register_route
from .routes import (
    BidirectionalRoute,
    CrossRoute,
    DilatedRoute,
    LocalBidirectionalRoute,
    LocalRoute,
    NestedSRoute,
    RasterRoute,
    SnakeRoute,
    TriOrientedRoute,
)

__all__ = [
    "BidirectionalRoute",
    "CrossRoute",
    "DilatedRoute",
    "LocalBidirectionalRoute",
    "LocalRoute",
    "NestedSRoute",
    "RasterRoute",
    "ScanRoute",
    "SnakeRoute",
    "TriOrientedRoute",
    "get_route",
    "list_routes",
    "register_route",
]
