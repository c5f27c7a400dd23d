"""LightM-UNet's residual vision Mamba layer (RVM): ``proj(norm(mamba(norm(t)) + skip_scale * t))`` on the
raster tokens t of a channels-first grid."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..conventions import check_spatial_dims
from .grid import check_grid, from_tokens, to_tokens
from .mamba import Mamba


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
        ssm: False gives the no-SSM (gated-CNN) control of the mixer.
    """

    def __init__(self, spatial_dims: int, dim: int, out_dim: int | None = None, d_state: int = 16,
                 d_conv: int = 4, expand: float = 2, dt_rank: int | str = "auto", scan_backend: str = "auto",
                 ssm: bool = True) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.dim = dim
        self.out_dim = dim if out_dim is None else out_dim
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_rank=dt_rank,
                           scan_backend=scan_backend, ssm=ssm)
        self.proj = nn.Linear(dim, self.out_dim)
        self.skip_scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, out_dim, *spatial)."""
        check_grid(x, self.spatial_dims, self.dim)
        t = to_tokens(x)
        y = self.mamba(self.norm(t)) + self.skip_scale * t
        return from_tokens(self.proj(self.norm(y)), x.shape[2:])
