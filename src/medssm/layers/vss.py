"""VMamba's visual state-space block and the residual skeleton the vision Mamba blocks share.

==========================  =========================================================================
block                       structure (x channels-first; norms and MLPs act on the channel axis)
==========================  =========================================================================
ResidualMixerBlock          x + dp(op(norm(x)));  x + dp(mlp(norm2(x)))    op: any channels-first mixer
VSSBlock (VMamba)           the same with op = MultiRouteMamba(route), route "cross" by default (SS2D)
LBMambaBlock (LBMamba)      the same with op = MultiRouteMamba("local_bidirectional")
==========================  =========================================================================

(dp = :class:`~medssm.layers.drop.DropPath`; the MLP branch exists only when ``mlp_ratio > 0``.)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..conventions import check_spatial_dims
from ..scans import ScanRoute, get_route
from .drop import DropPath
from .factories import ActLayer, NormLayer
from .grid import channels_last, check_grid
from .mlp import Mlp
from .vision_mamba import MultiRouteMamba


class ResidualMixerBlock(nn.Module):
    """Pre-norm residual block around a channels-first mixer ``op``: (batch, dim, *spatial) -> same shape.

    ``x = x + drop_path(op(norm(x)))``, then, when ``mlp_ratio > 0``, ``x = x + drop_path(mlp(norm2(x)))``
    (VMamba's VSSBlock layout and parameter names: ``norm``, ``op``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``).
    The norms and the MLP act on the channel axis. The subclasses below build ``op``.

    Args:
        spatial_dims: number of spatial axes of the input. dim: channels.
        op: mixer, (batch, dim, *spatial) -> (batch, dim, *spatial).
        mlp_ratio: MLP hidden width / dim; 0 removes the MLP branch.
        drop_path: stochastic-depth probability of both branches.
        norm_layer: norm constructor called with ``dim`` (acts on the last axis). act_layer: MLP activation.
    """

    def __init__(self, spatial_dims: int, dim: int, op: nn.Module, mlp_ratio: float = 0.0, drop_path: float = 0.0,
                 norm_layer: NormLayer = nn.LayerNorm, act_layer: ActLayer = nn.GELU) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.dim = dim
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0, got {mlp_ratio}")
        self.norm = norm_layer(dim)
        self.op = op
        self.drop_path = DropPath(drop_path)
        if mlp_ratio > 0:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, act_layer=act_layer, mlp_ratio=mlp_ratio)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        check_grid(x, self.spatial_dims, self.dim)
        x = x + self.drop_path(self.op(channels_last(self.norm, x)))
        if self.mlp is not None:
            x = x + self.drop_path(channels_last(lambda t: self.mlp(self.norm2(t)), x))
        return x


class VSSBlock(ResidualMixerBlock):
    """VMamba's visual state-space block (Liu et al. 2024, "VMamba: Visual State Space Model",
    arXiv:2401.10166), in N-d: (batch, dim, *spatial) -> same shape.

    ``x + drop_path(op(norm(x)))`` with ``op = MultiRouteMamba(route)`` (with the default ``route="cross"``
    and spatial_dims=2 this is SS2D), then ``x + drop_path(mlp(norm2(x)))`` unless ``mlp_ratio`` is 0.
    Parameter names follow VMamba's VSSBlock: ``norm``, ``op.*`` (SS2D's names, see MultiRouteMamba; its
    ``conv2d`` is ``op.conv``), ``norm2``, ``mlp.fc1``, ``mlp.fc2``.

    Args:
        spatial_dims: 1, 2 or 3. dim: channels.
        d_state, expand, d_conv, dt_rank, merge, bias: the mixer's (MultiRouteMamba) arguments.
        route, route_kwargs: the scan route by name and its arguments.
        mlp_ratio: MLP hidden width / dim (VMamba's 4.0); 0 disables the MLP branch.
        drop_path: stochastic-depth probability. norm_layer, act_layer: norm and MLP activation constructors.
        scan_backend: selective_scan backend of the mixer. ssm: False gives the no-SSM (gated-CNN) control.
    """

    def __init__(self, spatial_dims: int, dim: int, d_state: int = 16, expand: float = 2,
                 route: str | ScanRoute = "cross", route_kwargs: dict | None = None, d_conv: int = 3,
                 dt_rank: int | str = "auto", merge: str = "sum", bias: bool = False, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, norm_layer: NormLayer = nn.LayerNorm, act_layer: ActLayer = nn.GELU,
                 scan_backend: str = "auto", ssm: bool = True) -> None:
        op = MultiRouteMamba(spatial_dims, dim, d_state=d_state, expand=expand, route=route,
                             route_kwargs=route_kwargs, d_conv=d_conv, dt_rank=dt_rank, merge=merge, bias=bias,
                             scan_backend=scan_backend, ssm=ssm)
        super().__init__(spatial_dims, dim, op, mlp_ratio, drop_path, norm_layer, act_layer)


class LBMambaBlock(VSSBlock):
    """LBMamba block (Zhang et al. 2025, "LBMamba: Locally Bi-directional Mamba", arXiv:2506.15976):
    (batch, dim, *spatial) -> same shape, for spatial_dims 1, 2, 3.

    ``x + drop_path(op(norm(x)))`` (plus an MLP branch if ``mlp_ratio > 0``) with ``op =
    MultiRouteMamba(route="local_bidirectional", route_kwargs={"window": window, ...})``: a global forward
    raster scan and a backward scan inside windows of ``window`` consecutive tokens, in one grouped scan,
    summed.

    Direction alternation (LBVim): with ``alternate=True`` the block uses
    ``get_route("local_bidirectional", window=window).for_layer(layer_index)``, which is the route's
    ``flipped()`` on layers 2, 3, 6, 7, ... (``layer_index // 2`` odd): there the global scan runs over the
    reversed raster sequence and the local backward windows are cut from that reversed sequence. So layers
    0, 1 scan forwards, 2, 3 backwards, 4, 5 forwards, ...; with ``alternate=False`` every layer scans
    forwards. The route in use is ``self.op.route`` (its ``reverse`` attribute says the direction).

    Args:
        spatial_dims: 1, 2 or 3. dim: channels.
        window: w, tokens per local backward window (LBMamba's default 8 here).
        layer_index: this block's index in its stack. alternate: flip every two layers (see above).
        mlp_ratio: MLP hidden width / dim; 0 (LBVim, like Vim, has no MLP) disables it.
        Other arguments: as :class:`VSSBlock`.
    """

    def __init__(self, spatial_dims: int, dim: int, window: int = 8, layer_index: int = 0, alternate: bool = True,
                 d_state: int = 16, expand: float = 2, d_conv: int = 3, dt_rank: int | str = "auto",
                 bias: bool = False, mlp_ratio: float = 0.0, drop_path: float = 0.0,
                 norm_layer: NormLayer = nn.LayerNorm, act_layer: ActLayer = nn.GELU,
                 scan_backend: str = "auto", ssm: bool = True) -> None:
        if isinstance(layer_index, bool) or not isinstance(layer_index, int) or layer_index < 0:
            raise ValueError(f"layer_index must be a non-negative integer, got {layer_index!r}")
        route = get_route("local_bidirectional", window=window, alternate=alternate).for_layer(layer_index)
        super().__init__(spatial_dims, dim, d_state=d_state, expand=expand, route=route, d_conv=d_conv,
                         dt_rank=dt_rank, merge="sum", bias=bias, mlp_ratio=mlp_ratio, drop_path=drop_path,
                         norm_layer=norm_layer, act_layer=act_layer, scan_backend=scan_backend, ssm=ssm)
        self.layer_index = layer_index
        self.reverse = route.reverse
