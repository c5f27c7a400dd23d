"""Vision Mamba blocks of the published model families, on channels-first grids (batch, C, *spatial).

Every block takes ``spatial_dims`` (1, 2 or 3 where the paper's idea applies), works on any grid size and
passes ``scan_backend`` to its mixers. Variants are constructor arguments; the blocks share one residual
skeleton (:class:`ResidualMixerBlock`), :class:`DropPath` and :class:`Mlp`.

==========================  =========================================================================
block                       structure (x channels-first; norms and MLPs act on the channel axis)
==========================  =========================================================================
VSSBlock (VMamba)           x + dp(op(norm(x)));  x + dp(mlp(norm2(x)))    op = MultiRouteMamba("cross")
VimBlock (Vim)              t + dp(mixer(norm(t))) on the raster token sequence t (BiMamba mixer)
ResidualVisionMamba         proj(norm(mamba(norm(t)) + skip_scale * t)) on the raster tokens t
ToMBlock (SegMamba)         [gsc(x)] -> x + dp(op(norm(x)))                op = MultiRouteMamba("tri_oriented")
MultiHeadScanBlock (MHS-VM) x + dp(op(norm(x)))                            op = MultiHeadScan(routes)
LBMambaBlock (LBMamba)      x + dp(op(norm(x)))                            op = MultiRouteMamba("local_bidirectional")
==========================  =========================================================================

(dp = :class:`DropPath`; the MLP branch exists only when ``mlp_ratio > 0``.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..scans import ScanRoute, get_route
from .mamba import Mamba, check_input
from .norm import RMSNormGated
from .vision_mamba import MultiRouteMamba

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _check_spatial_dims(spatial_dims: int, allowed: Sequence[int] = (1, 2, 3)) -> int:
    if spatial_dims not in allowed:
        raise ValueError(f"spatial_dims must be one of {tuple(allowed)}, got {spatial_dims!r}")
    return spatial_dims


def _check_grid(x: torch.Tensor, spatial_dims: int, channels: int) -> None:
    """Raise ValueError unless x is (batch, channels, *spatial) with ``spatial_dims`` spatial axes."""
    if not isinstance(x, torch.Tensor) or x.dim() != spatial_dims + 2 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (batch, {channels}, *spatial) with {spatial_dims} spatial dims, "
                         f"got {got}")


def _channels_last(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply fn (acting on the last axis) to the channel axis of a channels-first tensor."""
    return fn(x.movedim(1, -1)).movedim(-1, 1)


def _instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each (sample, channel) of x (batch, C, *spatial) over its spatial axes (biased variance)."""
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), correction=0, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(batch, C, *spatial) -> raster-order tokens (batch, T, C): the last spatial axis varies fastest."""
    return x.flatten(2).transpose(1, 2)


def _from_tokens(t: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`_to_tokens`: (batch, T, C) -> (batch, C, *spatial)."""
    return t.transpose(1, 2).unflatten(-1, tuple(spatial))


class DropPath(nn.Module):
    """Stochastic depth per sample (Huang et al. 2016; timm's ``DropPath``): (batch, ...) -> same shape.

    In training, each sample's branch output is zeroed with probability p and the kept samples are scaled by
    1 / (1 - p), so the expectation is unchanged; in eval mode (or with p = 0) it is the identity.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop_path probability must be in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Two-layer MLP on the last axis: fc1 -> act -> fc2, (..., dim) -> (..., dim) (VMamba's/timm's ``Mlp``,
    parameter names ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: ActLayer = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        self.dim = dim
        if mlp_ratio < 0:
            raise ValueError(f"mlp_ratio must be >= 0, got {mlp_ratio}")
        self.norm = norm_layer(dim)
        self.op = op
        self.drop_path = DropPath(drop_path)
        if mlp_ratio > 0:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, max(1, int(dim * mlp_ratio)), act_layer)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        _check_grid(x, self.spatial_dims, self.dim)
        x = x + self.drop_path(self.op(_channels_last(self.norm, x)))
        if self.mlp is not None:
            x = x + self.drop_path(_channels_last(lambda t: self.mlp(self.norm2(t)), x))
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
        scan_backend: selective_scan backend of the mixer.
    """

    def __init__(self, spatial_dims: int, dim: int, d_state: int = 16, expand: float = 2,
                 route: str | ScanRoute = "cross", route_kwargs: dict | None = None, d_conv: int = 3,
                 dt_rank: int | str = "auto", merge: str = "sum", bias: bool = False, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, norm_layer: NormLayer = nn.LayerNorm, act_layer: ActLayer = nn.GELU,
                 scan_backend: str = "auto") -> None:
        op = MultiRouteMamba(spatial_dims, dim, d_state=d_state, expand=expand, route=route,
                             route_kwargs=route_kwargs, d_conv=d_conv, dt_rank=dt_rank, merge=merge, bias=bias,
                             scan_backend=scan_backend)
        super().__init__(spatial_dims, dim, op, mlp_ratio, drop_path, norm_layer, act_layer)


class ToMBlock(VSSBlock):
    """SegMamba's tri-orientated Mamba layer (Xing et al. 2024, "SegMamba: Long-range Sequential Modeling
    Mamba For 3D Medical Image Segmentation", arXiv:2401.13560), 3D only: (batch, dim, D, H, W) -> same.

    ``[x = gsc(x)]``, then ``x + drop_path(op(norm(x)))`` with ``op = MultiRouteMamba(route="tri_oriented",
    merge="sum")``: one grouped scan over the forward raster, the reversed raster and the inter-slice order
    (depth fastest), their outputs put back on the grid and summed (SegMamba's ``out + out_b.flip + out_s``).
    Differences from SegMamba's released mixer (bimamba "v3"): one centred 3D depthwise conv before the
    routes instead of a causal 1D conv per direction, and MultiRouteMamba's LayerNorm before the gate.
    SegMamba has no MLP in this layer (its MLP follows each encoder stage), hence ``mlp_ratio=0`` by default.

    Args:
        spatial_dims: must be 3. dim: channels.
        gsc: put SegMamba's gated spatial convolution (:class:`GSC`) in front. gsc_gate: "mul" (the paper's
            gate) or "add" (the released code's sum); see :class:`GSC`.
        Other arguments: as :class:`VSSBlock`.
    """

    def __init__(self, spatial_dims: int, dim: int, d_state: int = 16, expand: float = 2, d_conv: int = 3,
                 dt_rank: int | str = "auto", bias: bool = False, gsc: bool = False, gsc_gate: str = "mul",
                 mlp_ratio: float = 0.0, drop_path: float = 0.0, norm_layer: NormLayer = nn.LayerNorm,
                 act_layer: ActLayer = nn.GELU, scan_backend: str = "auto") -> None:
        if spatial_dims != 3:
            raise ValueError(f"ToMBlock (SegMamba's tri-orientated Mamba) is 3D only: spatial_dims must be 3, "
                             f"got {spatial_dims!r}")
        super().__init__(3, dim, d_state=d_state, expand=expand, route="tri_oriented", d_conv=d_conv,
                         dt_rank=dt_rank, merge="sum", bias=bias, mlp_ratio=mlp_ratio, drop_path=drop_path,
                         norm_layer=norm_layer, act_layer=act_layer, scan_backend=scan_backend)
        self.gsc = GSC(3, dim, gate=gsc_gate) if gsc else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, D, H, W) -> (batch, dim, D, H, W)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"ToMBlock takes 3D volumes (batch, {self.dim}, D, H, W), got {got}")
        if self.gsc is not None:
            _check_grid(x, 3, self.dim)
            x = self.gsc(x)
        return super().forward(x)


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
                 scan_backend: str = "auto") -> None:
        if isinstance(layer_index, bool) or not isinstance(layer_index, int) or layer_index < 0:
            raise ValueError(f"layer_index must be a non-negative integer, got {layer_index!r}")
        route = get_route("local_bidirectional", window=window, alternate=alternate).for_layer(layer_index)
        super().__init__(spatial_dims, dim, d_state=d_state, expand=expand, route=route, d_conv=d_conv,
                         dt_rank=dt_rank, merge="sum", bias=bias, mlp_ratio=mlp_ratio, drop_path=drop_path,
                         norm_layer=norm_layer, act_layer=act_layer, scan_backend=scan_backend)
        self.layer_index = layer_index
        self.reverse = route.reverse


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
    """

    def __init__(self, spatial_dims: int, dim: int, routes: Sequence[str] = ("cross", "snake", "local", "dilated"),
                 route_kwargs: Sequence[dict | None] | None = None, d_state: int = 16, expand: float = 2,
                 d_conv: int = 3, dt_rank: int | str = "auto", merge: str = "sum", bias: bool = False,
                 scan_backend: str = "auto", fusion: str = "attention", gate_threshold: float = 0.0) -> None:
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
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        self.dim = dim
        self.routes = routes
        self.num_heads = k
        self.head_dim = head_dim = dim // k
        self.x_ssproj = nn.Linear(dim, k * head_dim, bias=False)
        self.heads = nn.ModuleList(
            MultiRouteMamba(spatial_dims, head_dim, d_state=d_state, expand=expand, route=r, route_kwargs=kw,
                            d_conv=d_conv, dt_rank=dt_rank, merge="cv_gate" if fusion == "cv_gate" else merge,
                            bias=bias, scan_backend=scan_backend, gate_threshold=gate_threshold)
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
        _check_grid(x, self.spatial_dims, self.dim)
        parts = _channels_last(self.x_ssproj, x).split(self.head_dim, dim=1)
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
        return _channels_last(lambda t: self.y_proj(self.cat_norm(t)), y)


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
                 gate_threshold: float = 0.0) -> None:
        op = MultiHeadScan(spatial_dims, dim, routes=routes, route_kwargs=route_kwargs, d_state=d_state,
                           expand=expand, d_conv=d_conv, dt_rank=dt_rank, merge=merge, bias=bias,
                           scan_backend=scan_backend, fusion=fusion, gate_threshold=gate_threshold)
        super().__init__(spatial_dims, dim, op, mlp_ratio, drop_path, norm_layer, act_layer)


class GSC(nn.Module):
    """SegMamba's gated spatial convolution (Xing et al. 2024, arXiv:2401.13560): (batch, C, *spatial) ->
    same shape, for spatial_dims 1, 2, 3.

    With ``block_k(x) = ReLU(InstanceNorm(Conv_k(x)))`` (k x k x k conv, padding k // 2)::

        a = block_3(block_3(x))          proj, norm / proj2, norm2
        b = block_1(x)                   proj3, norm3
        out = x + block_1(a * b)         proj4, norm4   (gate="mul", the paper's equation)
        out = x + block_1(a + b)                         (gate="add", SegMamba's released code)

    Parameter names follow the released code (``proj``, ``proj2``, ``proj3``, ``proj4``; the instance norms
    have no affine parameters). The instance norm is computed directly (per sample and channel, biased
    variance, eps 1e-5, as ``nn.InstanceNorm3d``), so that a one-voxel grid also works (it gives 0 there).
    """

    def __init__(self, spatial_dims: int, channels: int, gate: str = "mul") -> None:
        super().__init__()
        if gate not in ("mul", "add"):
            raise ValueError(f"gate must be 'mul' or 'add', got {gate!r}")
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        self.channels = channels
        self.gate = gate
        conv = _CONV[spatial_dims]
        self.proj = conv(channels, channels, 3, padding=1)
        self.proj2 = conv(channels, channels, 3, padding=1)
        self.proj3 = conv(channels, channels, 1)
        self.proj4 = conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, channels, *spatial) -> (batch, channels, *spatial)."""
        _check_grid(x, self.spatial_dims, self.channels)

        def block(conv: nn.Module, t: torch.Tensor) -> torch.Tensor:
            return F.relu(_instance_norm(conv(t)))

        a = block(self.proj2, block(self.proj, x))
        b = block(self.proj3, x)
        return x + block(self.proj4, a * b if self.gate == "mul" else a + b)


class BiMamba(Mamba):
    """Vim's bidirectional Mamba mixer, ``bimamba_type="v2"`` (Zhu et al. 2024, "Vision Mamba: Efficient
    Visual Representation Learning with Bidirectional State Space Model", arXiv:2401.09417):
    (batch, L, d_model) -> (batch, L, d_model).

    Parameters: mamba_ssm's Mamba names for the shared projections and the forward branch (``in_proj``,
    ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``) plus Vim's backward branch
    ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``, so Vim's mixer state dicts load strictly.
    Computation, as Vim's fast path::

        x, z = in_proj(t).chunk(2)                                  (batch, d_inner, L) each
        y   = branch(x, z)                                          forward branch (conv1d, x_proj, ...)
        y_b = branch_b(x.flip(L), z.flip(L)).flip(L)                backward branch on the reversed sequence
        out = out_proj((y + y_b) / 2)                               (y + y_b without the /2 if not divide_out)

    where branch = causal conv + SiLU -> x_proj -> dt_proj -> selective scan gated by silu(z) (the gate is
    flipped with x, so after flipping back each token is gated by its own z). ``divide_out=True`` is Vim's
    ``if_devide_out=True`` (all its released models). The backward branch is initialised exactly like the
    forward one (Vim leaves ``dt_proj_b`` at nn.Linear's default init; here it gets Mamba's dt init too).
    Bidirectional, so there is no recurrent ``step``.

    Args: those of :class:`~medssm.layers.Mamba`, plus divide_out.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 divide_out: bool = True, scan_backend: str = "auto", layer_idx: int | None = None, device=None,
                 dtype=None) -> None:
        kwargs = dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, dt_min=dt_min, dt_max=dt_max,
                      dt_init=dt_init, dt_scale=dt_scale, dt_init_floor=dt_init_floor, conv_bias=conv_bias,
                      bias=bias, scan_backend=scan_backend, device=device, dtype=dtype)
        super().__init__(d_model, layer_idx=layer_idx, **kwargs)
        self.divide_out = divide_out
        twin = Mamba(d_model, **kwargs)  # the backward branch, initialised exactly like the forward one
        self.A_b_log = twin.A_log
        self.conv1d_b = twin.conv1d
        self.x_proj_b = twin.x_proj
        self.dt_proj_b = twin.dt_proj
        self.D_b = twin.D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, L, d_model) -> (batch, L, d_model)."""
        check_input(x, self.d_model)
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        y = self.scan_branch(u, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        y_b = self.scan_branch(u.flip(-1), z.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log,
                               self.D_b).flip(-1)
        y = y + y_b
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))

    def step(self, *args, **kwargs):
        raise NotImplementedError("BiMamba scans both directions: it has no token-by-token recurrent step")

    def allocate_inference_cache(self, *args, **kwargs):
        raise NotImplementedError("BiMamba scans both directions: it has no token-by-token recurrent step")


class VimBlock(nn.Module):
    """Vision Mamba (Vim) block (Zhu et al. 2024, arXiv:2401.09417): (batch, dim, *spatial) -> same shape.

    The grid is flattened in raster order (the last spatial axis fastest, as Vim orders its patch tokens)
    into t (batch, T, dim); then ``t + drop_path(mixer(norm(t)))`` with ``mixer =`` :class:`BiMamba`, and the
    tokens are put back on the grid. This equals Vim's Add -> Norm -> mixer chaining, where the residual
    add is done at the start of the next block (and Vim's final norm lives in the model). Keys, as in Vim's
    ``layers.{i}``: ``norm.weight`` (RMSNorm, Vim's ``rms_norm=True``; ``norm.bias`` too with a LayerNorm)
    and ``mixer.*`` (see BiMamba).

    Args:
        spatial_dims: 1, 2 or 3. dim: channels.
        d_state, d_conv, expand, dt_rank, bias, divide_out: BiMamba's arguments.
        drop_path: stochastic-depth probability. norm_layer: norm constructor (default RMSNorm, eps 1e-5).
        scan_backend: selective_scan backend.
    """

    def __init__(self, spatial_dims: int, dim: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", bias: bool = False, divide_out: bool = True, drop_path: float = 0.0,
                 norm_layer: NormLayer = RMSNormGated, scan_backend: str = "auto") -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        self.dim = dim
        self.norm = norm_layer(dim)
        self.mixer = BiMamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, bias=bias,
                             divide_out=divide_out, scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        _check_grid(x, self.spatial_dims, self.dim)
        t = _to_tokens(x)
        t = t + self.drop_path(self.mixer(self.norm(t)))
        return _from_tokens(t, x.shape[2:])


class ResidualVisionMamba(nn.Module):
    """LightM-UNet's residual vision Mamba layer, RVM (Liao et al. 2024, "LightM-UNet: Mamba Assists in
    Lightweight UNet for Medical Image Segmentation", arXiv:2403.05246): (batch, dim, *spatial) ->
    (batch, out_dim, *spatial), any spatial_dims.

    On the raster-flattened tokens t (batch, T, dim)::

        y = mamba(norm(t)) + skip_scale * t          skip_scale: learnable scalar s, initialised to 1
        out = proj(norm(y))                          proj: Linear(dim, out_dim)

    The same LayerNorm ``norm`` is applied both times, as in LightM-UNet's released ``RVMLayer`` (whose
    parameter names ``norm``, ``mamba.*`` (mamba_ssm's Mamba), ``proj``, ``skip_scale`` are kept).

    Args:
        spatial_dims: 1, 2 or 3. dim: input channels. out_dim: output channels (default dim).
        d_state, d_conv, expand, dt_rank: the Mamba mixer's arguments. scan_backend: its scan backend.
    """

    def __init__(self, spatial_dims: int, dim: int, out_dim: int | None = None, d_state: int = 16,
                 d_conv: int = 4, expand: float = 2, dt_rank: int | str = "auto", scan_backend: str = "auto") -> None:
        super().__init__()
        self.spatial_dims = _check_spatial_dims(spatial_dims)
        self.dim = dim
        self.out_dim = dim if out_dim is None else out_dim
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                           scan_backend=scan_backend)
        self.proj = nn.Linear(dim, self.out_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, out_dim, *spatial)."""
        _check_grid(x, self.spatial_dims, self.dim)
        t = _to_tokens(x)
        y = self.mamba(self.norm(t)) + self.skip_scale * t
        return _from_tokens(self.proj(self.norm(y)), x.shape[2:])
