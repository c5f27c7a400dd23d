"""SegMamba's blocks (Xing et al. 2024, "SegMamba: Long-range Sequential Modeling Mamba For 3D Medical Image
Segmentation", arXiv:2401.13560): the tri-orientated Mamba layer :class:`ToMBlock` and the gated spatial
convolution :class:`GSC` in front of it.

==========================  =========================================================================
block                       structure (x channels-first)
==========================  =========================================================================
ToMBlock                    [gsc(x)] -> x + dp(op(norm(x)))                op = MultiRouteMamba("tri_oriented")
GSC                         x + block_1(block_3(block_3(x)) * block_1(x))  block_k = ReLU(IN(Conv_k))
==========================  =========================================================================
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conventions import check_spatial_dims
from .factories import ActLayer, NormLayer, conv_nd
from .grid import check_grid
from .vss import VSSBlock


def _instance_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Normalise each (sample, channel) of x (batch, C, *spatial) over its spatial axes (biased variance)."""
    var, mean = torch.var_mean(x, dim=tuple(range(2, x.dim())), correction=0, keepdim=True)
    return (x - mean) * torch.rsqrt(var + eps)


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
                 act_layer: ActLayer = nn.GELU, scan_backend: str = "auto", ssm: bool = True) -> None:
        if spatial_dims != 3:
            raise ValueError(f"ToMBlock (SegMamba's tri-orientated Mamba) is 3D only: spatial_dims must be 3, "
                             f"got {spatial_dims!r}")
        super().__init__(3, dim, d_state=d_state, expand=expand, route="tri_oriented", d_conv=d_conv,
                         dt_rank=dt_rank, merge="sum", bias=bias, mlp_ratio=mlp_ratio, drop_path=drop_path,
                         norm_layer=norm_layer, act_layer=act_layer, scan_backend=scan_backend, ssm=ssm)
        self.gsc = GSC(3, dim, gate=gsc_gate) if gsc else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, D, H, W) -> (batch, dim, D, H, W)."""
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"ToMBlock takes 3D volumes (batch, {self.dim}, D, H, W), got {got}")
        if self.gsc is not None:
            check_grid(x, 3, self.dim)
            x = self.gsc(x)
        return super().forward(x)


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
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.channels = channels
        self.gate = gate
        self.proj = conv_nd(spatial_dims, channels, channels, 3, padding=1)
        self.proj2 = conv_nd(spatial_dims, channels, channels, 3, padding=1)
        self.proj3 = conv_nd(spatial_dims, channels, channels, 1)
        self.proj4 = conv_nd(spatial_dims, channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, channels, *spatial) -> (batch, channels, *spatial)."""
        check_grid(x, self.spatial_dims, self.channels)

        def block(conv: nn.Module, t: torch.Tensor) -> torch.Tensor:
            return F.relu(_instance_norm(conv(t)))

        a = block(self.proj2, block(self.proj, x))
        b = block(self.proj3, x)
        return x + block(self.proj4, a * b if self.gate == "mul" else a + b)
