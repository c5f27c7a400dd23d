"""Vim's bidirectional Mamba (Zhu et al. 2024, "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model", arXiv:2401.09417): the mixer :class:`BiMamba` and the block :class:`VimBlock`,
``t + dp(mixer(norm(t)))`` on the raster token sequence t of a channels-first grid.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..conventions import check_spatial_dims
from .drop import DropPath
from .factories import NormLayer
from .grid import check_grid, from_tokens, to_tokens
from .mamba import Mamba, check_input
from .norm import RMSNormGated


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
                 divide_out: bool = True, scan_backend: str = "auto", layer_idx: int | None = None,
                 ssm: bool = True, device=None, dtype=None) -> None:
        kwargs = dict(d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, dt_min=dt_min, dt_max=dt_max,
                      dt_init=dt_init, dt_scale=dt_scale, dt_init_floor=dt_init_floor, conv_bias=conv_bias,
                      bias=bias, scan_backend=scan_backend, ssm=ssm, device=device, dtype=dtype)
        super().__init__(d_model, layer_idx=layer_idx, **kwargs)
        self.divide_out = divide_out
        twin = Mamba(d_model, **kwargs)  # the backward branch, initialised exactly like the forward one
        self.conv1d_b = twin.conv1d
        if ssm:
            self.A_b_log = twin.A_log
            self.x_proj_b = twin.x_proj
            self.dt_proj_b = twin.dt_proj
            self.D_b = twin.D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, L, d_model) -> (batch, L, d_model)."""
        check_input(x, self.d_model)
        u, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        forward, backward = self._branch_parameters()
        y = self.scan_branch(u, z, *forward)
        y_b = self.scan_branch(u.flip(-1), z.flip(-1), *backward).flip(-1)
        y = y + y_b
        if self.divide_out:
            y = y / 2
        return self.out_proj(y.transpose(1, 2))

    def _branch_parameters(self) -> tuple[tuple, tuple]:
        """(conv1d, x_proj, dt_proj, A_log, D) of the forward and the backward branch (None without the SSM)."""
        if not self.ssm:
            return (self.conv1d, None, None, None, None), (self.conv1d_b, None, None, None, None)
        return ((self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D),
                (self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b))

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
        scan_backend: selective_scan backend. ssm: False gives the no-SSM (gated-CNN) control.
    """

    def __init__(self, spatial_dims: int, dim: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                 dt_rank: int | str = "auto", bias: bool = False, divide_out: bool = True, drop_path: float = 0.0,
                 norm_layer: NormLayer = RMSNormGated, scan_backend: str = "auto",
                 ssm: bool = True) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.dim = dim
        self.norm = norm_layer(dim)
        self.mixer = BiMamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank, bias=bias,
                             divide_out=divide_out, scan_backend=scan_backend, ssm=ssm)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, dim, *spatial)."""
        check_grid(x, self.spatial_dims, self.dim)
        t = to_tokens(x)
        t = t + self.drop_path(self.mixer(self.norm(t)))
        return from_tokens(t, x.shape[2:])
