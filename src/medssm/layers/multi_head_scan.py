"""MHS-VM's multi-head scan (Ji 2024, "MHS-VM: Multi-Head Scanning in Parallel Subspaces for Vision Mamba",
arXiv:2406.05992): the mixer :class:`MultiHeadScan` (one scan route per head, fused across heads) and its
residual block :class:`MultiHeadScanBlock`, ``x + dp(op(norm(x)))`` with ``op = MultiHeadScan(routes)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..conventions import check_spatial_dims
from .factories import ActLayer, NormLayer
from .grid import channels_last, check_grid
from .vision_mamba import MultiRouteMamba
from .vss import ResidualMixerBlock


class MultiHeadScan(nn.Module):
    """MHS-VM's multi-head scan mixer (Ji 2024, "MHS-VM: Multi-Head Scanning in Parallel Subspaces for Vision
    Mamba", arXiv:2406.05992): (batch, dim, *spatial) -> same shape.

    With k = len(routes) heads and head_dim = dim // k::

        x_ssproj (bias-free Linear dim -> k * head_dim), split into k subspaces x_1..x_k
        y_i = heads[i](x_i)              MultiRouteMamba(head_dim, route=routes[i]): its K routes, summed
        p = concat_i mean_spatial(y_i)   (batch, k * head_dim)
        w = softmax(route_attn(p))       (batch, k), one weight per head (route), summing to one
        y = y_proj(cat_norm(concat_i(w_i * y_i)))

    ``route_attn`` (Linear k * head_dim -> k) starts at zero, so the heads start equally weighted.

    ``fusion="cv_gate"`` follows MHS-VM's released code instead: inside each head the K route outputs are
    fused by its gated fusion unit (:func:`~medssm.layers.vision_mamba.cv_gate_merge`: the routes' sum gated
    by their coefficient of variation) and the heads are simply concatenated (no ``route_attn``). Remaining
    difference: there each head is a bare scan (its in/out projections and gate live in the enclosing block)
    over 2 routes and their reverses; here each head is a full MultiRouteMamba over its route's orders.
    ``x_ssproj``, ``cat_norm`` and ``y_proj`` keep MHS-VM's names.

    Args:
        spatial_dims: 1, 2 or 3. dim: channels.
        routes: one scan route name per head; route_kwargs: one dict (or None) per head.
        d_state, expand, d_conv, dt_rank, merge, bias, scan_backend: each head's MultiRouteMamba arguments.
        fusion: "attention" (softmax weights across heads) or "cv_gate" (MHS-VM's gated fusion unit inside each
            head, heads concatenated; ``merge`` must then stay "sum"). gate_threshold: the gate's threshold t.
        ssm: False gives every head the no-SSM (gated-CNN) mixer.
    """

    def __init__(self, spatial_dims: int, dim: int, routes: Sequence[str] = ("cross", "snake", "local", "dilated"),
                 route_kwargs: Sequence[dict | None] | None = None, d_state: int = 16, expand: float = 2,
                 d_conv: int = 3, dt_rank: int | str = "auto", merge: str = "sum", bias: bool = False,
                 scan_backend: str = "auto", fusion: str = "attention", gate_threshold: float = 0.0,
                 ssm: bool = True) -> None:
        super().__init__()
        routes = [routes] if isinstance(routes, str) else list(routes)
        k = len(routes)
        route_kwargs = [None] * k if route_kwargs is None else list(route_kwargs)
        if k < 1 or len(route_kwargs) != k:
            raise ValueError(f"need at least one route and one route_kwargs entry per route, got routes={routes}, "
                             f"route_kwargs={route_kwargs}")
        if dim // k < 1:
            raise ValueError(f"dim={dim} is too small for {k} heads")
        if fusion not in ("attention", "cv_gate"):
            raise ValueError(f"fusion must be 'attention' or 'cv_gate', got {fusion!r}")
        if fusion == "cv_gate" and merge != "sum":
            raise ValueError(f"fusion='cv_gate' fuses each head's routes itself; merge must be 'sum', got {merge!r}")
        self.fusion = fusion
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.dim = dim
        self.routes = routes
        self.num_heads = k
        self.head_dim = head_dim = dim // k
        self.x_ssproj = nn.Linear(dim, k * head_dim, bias=False)
        self.heads = nn.ModuleList(
            MultiRouteMamba(spatial_dims, head_dim, d_state=d_state, expand=expand, route=r, route_kwargs=kw,
                            d_conv=d_conv, dt_rank=dt_rank, merge="cv_gate" if fusion == "cv_gate" else merge,
                            bias=bias, scan_backend=scan_backend, gate_threshold=gate_threshold, ssm=ssm)
            for r, kw in zip(routes, route_kwargs, strict=True))
        self.route_attn = None
        if fusion == "attention":
            self.route_attn = nn.Linear(k * head_dim, k)
            nn.init.zeros_(self.route_attn.weight)
            nn.init.zeros_(self.route_attn.bias)
        self.cat_norm = nn.LayerNorm(k * head_dim)
        self.y_proj = nn.Linear(k * head_dim, dim, bias=False)

    def head_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (batch, dim, *spatial) -> k head outputs, each (batch, head_dim, *spatial)."""
        check_grid(x, self.spatial_dims, self.dim)
        parts = channels_last(self.x_ssproj, x).split(self.head_dim, dim=1)
        return [head(part) for head, part in zip(self.heads, parts, strict=True)]

    def route_weights(self, ys: Sequence[torch.Tensor]) -> torch.Tensor:
        """Head outputs -> the scan-route attention weights (batch, k), a softmax over the heads."""
        if self.route_attn is None:
            raise ValueError("route_weights exist only with fusion='attention'")
        pooled = torch.cat([y.flatten(2).mean(-1) for y in ys], dim=1)
        return torch.softmax(self.route_attn(pooled), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        ys = self.head_outputs(x)
        if self.route_attn is None:
            y = torch.cat(ys, dim=1)
        else:
            w = self.route_weights(ys).to(ys[0].dtype)
            extra = (1,) * self.spatial_dims
            y = torch.cat([y * w[:, i].view(-1, 1, *extra) for i, y in enumerate(ys)], dim=1)
        return channels_last(lambda t: self.y_proj(self.cat_norm(t)), y)


class MultiHeadScanBlock(ResidualMixerBlock):
    """MHS-VM block (Ji 2024, arXiv:2406.05992): ``x + drop_path(op(norm(x)))`` with ``op =``
    :class:`MultiHeadScan` (one scan route per head, scan-route attention across heads; see there), plus an
    MLP branch if ``mlp_ratio > 0`` (MHS-VM builds on VM-UNet's block, which has none: default 0).
    (batch, dim, *spatial) -> same shape.

    Args:
        spatial_dims: 1, 2 or 3 (every route must support it: "local" is 2D/3D only). dim: channels.
        routes, route_kwargs: one scan route (and its arguments) per head.
        Other arguments: as :class:`VSSBlock`.
    """

    def __init__(self, spatial_dims: int, dim: int, routes: Sequence[str] = ("cross", "snake", "local", "dilated"),
                 route_kwargs: Sequence[dict | None] | None = None, d_state: int = 16, expand: float = 2,
                 d_conv: int = 3, dt_rank: int | str = "auto", merge: str = "sum", bias: bool = False,
                 mlp_ratio: float = 0.0, drop_path: float = 0.0, norm_layer: NormLayer = nn.LayerNorm,
                 act_layer: ActLayer = nn.GELU, scan_backend: str = "auto", fusion: str = "attention",
                 gate_threshold: float = 0.0, ssm: bool = True) -> None:
        op = MultiHeadScan(spatial_dims, dim, routes=routes, route_kwargs=route_kwargs, d_state=d_state,
                           expand=expand, d_conv=d_conv, dt_rank=dt_rank, merge=merge, bias=bias,
                           scan_backend=scan_backend, fusion=fusion, gate_threshold=gate_threshold, ssm=ssm)
        super().__init__(spatial_dims, dim, op, mlp_ratio, drop_path, norm_layer, act_layer)
