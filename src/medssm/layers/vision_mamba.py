"""The multi-route vision Mamba mixer: one grouped selective scan over K scan routes of an N-d token grid.

For x (batch, d_model, *spatial) with spatial_dims 1, 2 or 3::

    in_proj -> x, z (d_inner each)
    x -> depthwise conv in N-d + SiLU
    gather along the route's K orderings -> (batch, K, d_inner, T)
    per-route x_proj -> dt (dt_rank), B, C (d_state); per-route dt_proj
    ONE selective_scan call with B/C grouped by route (G = K): channels (k, c) use route k's B_k, C_k
    scatter each sequence back to the grid and merge (sum, or learned per-route weights)
    LayerNorm -> * silu(z) -> out_proj

With ``route="cross"`` and spatial_dims=2 this is VMamba's SS2D (Liu et al., 2024), and it keeps SS2D's
parameter names (``x_proj_weight`` (K, dt_rank + 2N, d_inner), ``dt_projs_weight`` (K, d_inner, dt_rank),
``dt_projs_bias`` (K, d_inner), ``A_logs`` (K*d_inner, N), ``Ds`` (K*d_inner,), ``out_norm``) so that its
checkpoints map onto ours (``conv2d`` is called ``conv`` here, for every spatial_dims).

With ``ssm=False`` the routes, the scan and its parameters are left out: ``out_proj(LayerNorm(silu(conv(x)))
* silu(z))``, MambaOut's gated CNN (Yu & Wang 2024), the no-SSM control of every block built on this mixer.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conventions import check_spatial_dims
from ..ops import selective_scan
from ..scans import ScanRoute, get_route
from .factories import conv_nd
from .grid import check_grid
from .mamba import init_dt_bias, no_weight_decay, s4d_real_A_log
from .restoration import SequenceShuffleAttention

MERGES = ("sum", "weighted", "cv_gate", "ssa")


def cv_gate_merge(grids: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """MHS-VM's gated fusion unit (Ji 2024, arXiv:2406.05992): (batch, K, C, *spatial) route outputs on the
    grid -> (batch, C, *spatial).

    ``sum_k y_k * relu(cv - threshold)``, where cv is the coefficient of variation of each position's K route
    outputs: their standard deviation over the mean of (y_k - min_k y_k) (shifted so the mean is
    non-negative; 1e-5 keeps it finite). Positions where the routes disagree pass; where they agree they are
    suppressed.
    """
    spread = grids.std(dim=1)
    shifted_mean = (grids - grids.min(dim=1, keepdim=True).values).mean(dim=1)
    return grids.sum(dim=1) * F.relu(spread / (shifted_mean + 1e-5) - threshold)


class MultiRouteMamba(nn.Module):
    """Mamba mixer over K scan routes of a token grid: (batch, d_model, *spatial) -> same shape.

    Args:
        spatial_dims: 1, 2 or 3.
        d_model: channels in and out. d_state: SSM state size N. expand: d_inner / d_model.
        route: scan route name (``medssm.scans.list_routes()``) or a ScanRoute instance (e.g. a custom
            subclass); route_kwargs: the named route's arguments (e.g. window).
        d_conv: depthwise conv kernel size (odd: the conv is centred, not causal, as in VMamba).
        dt_rank: "auto" = ceil(d_model / 16). dt_min, dt_max, dt_init_floor: dt bias initialisation.
        merge: "sum" (VMamba), "weighted" (a learned softmax weight per route) or "cv_gate" (MHS-VM's gated
            fusion unit, :func:`cv_gate_merge`; needs K >= 2) or "ssa" (MaIR's sequence shuffle attention,
            :class:`~medssm.layers.restoration.SequenceShuffleAttention`, as ``gating``; needs K >= 2).
            gate_threshold: cv_gate's threshold t.
        scan_backend: selective_scan backend.
        ssm: False leaves the routes, the scan and its parameters out (the gated-CNN control, see above).
    """

    def __init__(self, spatial_dims: int, d_model: int, d_state: int = 16, expand: float = 2,
                 route: str | ScanRoute = "cross", route_kwargs: dict | None = None, d_conv: int = 3,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, merge: str = "sum", bias: bool = False,
                 scan_backend: str = "auto", gate_threshold: float = 0.0, ssm: bool = True) -> None:
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        if d_conv % 2 != 1:
            raise ValueError(f"d_conv must be odd (a centred depthwise conv), got {d_conv}")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else dt_rank
        if isinstance(route, ScanRoute):
            if route_kwargs:
                raise ValueError("route_kwargs apply to a route given by name, not to a ScanRoute instance")
            self.route = route
        elif isinstance(route, str):
            self.route = get_route(route, **(route_kwargs or {}))
        else:
            raise ValueError(f"route must be a route name or a ScanRoute, got {type(route).__name__}")
        self.num_routes = K = self.route.num_orders(spatial_dims)
        if merge in ("cv_gate", "ssa") and K < 2:
            raise ValueError(f"merge={merge!r} compares routes, but route {self.route.name!r} gives K={K} in "
                             f"{spatial_dims}D")
        self.merge_mode = merge
        self.gate_threshold = gate_threshold
        self.scan_backend = scan_backend
        self.ssm = ssm

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv = conv_nd(spatial_dims, self.d_inner, self.d_inner, d_conv, padding=d_conv // 2,
                            groups=self.d_inner)
        if ssm:
            self._init_ssm(dt_min, dt_max, dt_init_floor)
        self.route_logits = nn.Parameter(torch.zeros(K)) if merge == "weighted" and ssm else None
        if merge == "ssa" and ssm:
            self.gating = SequenceShuffleAttention(self.d_inner, K)
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def _init_ssm(self, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """The scan's parameters per route, with SS2D's names and VMamba's initialisation."""
        K, d_inner, rank, d_state = self.num_routes, self.d_inner, self.dt_rank, self.d_state
        self.x_proj_weight = nn.Parameter(torch.empty(K, rank + 2 * d_state, d_inner))
        nn.init.uniform_(self.x_proj_weight, -d_inner**-0.5, d_inner**-0.5)  # nn.Linear's default range
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, rank))
        nn.init.uniform_(self.dt_projs_weight, -(rank**-0.5), rank**-0.5)
        self.dt_projs_bias = nn.Parameter(init_dt_bias(K * d_inner, dt_min, dt_max, dt_init_floor).view(K, d_inner))
        self.A_logs = nn.Parameter(s4d_real_A_log(K * d_inner, d_state))
        self.Ds = nn.Parameter(torch.ones(K * d_inner))
        no_weight_decay(self.A_logs, self.Ds, self.dt_projs_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, d_model, *spatial) -> (batch, d_model, *spatial)."""
        check_grid(x, self.spatial_dims, self.d_model)
        batch, spatial = x.shape[0], tuple(x.shape[2:])
        xz = self.in_proj(x.movedim(1, -1))  # (batch, *spatial, 2 * d_inner)
        u, z = xz.chunk(2, dim=-1)
        u = F.silu(self.conv(u.movedim(-1, 1)))  # (batch, d_inner, *spatial)
        y = self._scan_routes(u, batch, spatial) if self.ssm else u
        y = self.out_norm(y.movedim(1, -1)) * F.silu(z)
        return self.out_proj(y).movedim(-1, 1)

    def _scan_routes(self, u: torch.Tensor, batch: int, spatial: tuple[int, ...]) -> torch.Tensor:
        """u (batch, d_inner, *spatial) -> the K routes' scans, merged on the grid: (batch, d_inner, *spatial)."""
        # Under mixed precision the projections feeding the scan and the scan itself stay in fp32 (VMamba#138).
        with torch.autocast(u.device.type, enabled=False):
            seqs = self.route.gather(u.to(self.x_proj_weight.dtype))  # (batch, K, d_inner, T), fp32 unless cast
            K, T = self.num_routes, seqs.shape[-1]
            x_dbl = torch.einsum("bkdt,kcd->bkct", seqs, self.x_proj_weight)
            dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=2)
            dt = torch.einsum("bkrt,kdr->bkdt", dt, self.dt_projs_weight)  # (batch, K, d_inner, T)
            y = selective_scan(seqs.reshape(batch, K * self.d_inner, T), dt.reshape(batch, K * self.d_inner, T),
                               -torch.exp(self.A_logs.float()), B, C, self.Ds.float(),
                               delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True,
                               backend=self.scan_backend)
        y = y.view(batch, K, self.d_inner, T)
        if self.route_logits is not None:
            y = y * torch.softmax(self.route_logits, 0).view(1, K, 1, 1).to(y.dtype)
        if self.merge_mode == "cv_gate":
            y = cv_gate_merge(self.route.scatter(y, spatial), self.gate_threshold)
        elif self.merge_mode == "ssa":
            y = self.gating(self.route.scatter(y, spatial))
        else:
            y = self.route.merge(y, spatial)  # (batch, d_inner, *spatial)
        return y
