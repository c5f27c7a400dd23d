"""Normalisation layers: the gated RMSNorm of the Mamba mixers and a channels-first LayerNorm."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNormGated(nn.Module):
    """RMSNorm with an optional SiLU gate and per-group statistics (mamba_ssm's layernorm_gated ``RMSNorm``).

    With a gate z, ``norm_before_gate=False`` gives ``rmsnorm(x * silu(z)) * weight`` (what Mamba-2 uses) and
    ``norm_before_gate=True`` gives ``rmsnorm(x) * weight * silu(z)``. The root mean square is taken over
    each block of ``group_size`` consecutive channels (None: all channels). Note mamba_ssm's class defaults
    to ``norm_before_gate=True``; ours defaults to Mamba-2's False. Parameter: ``weight`` (hidden_size,).

    Args:
        hidden_size: number of channels (the last axis).
        eps: added to the mean square.
        group_size: channels per normalisation group; must divide hidden_size. None: one group.
        norm_before_gate: where the gate goes (see above).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None,
                 norm_before_gate: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        group_size = hidden_size if group_size is None else group_size
        if group_size < 1 or hidden_size % group_size != 0:
            raise ValueError(f"group_size={group_size} must divide hidden_size={hidden_size}")
        self.hidden_size = hidden_size
        self.eps = eps
        self.group_size = group_size
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """x and optional z: (..., hidden_size) -> (..., hidden_size) in x's dtype (computed in fp32)."""
        if x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must have {self.hidden_size} channels in its last axis, "
                             f"got shape {tuple(x.shape)}")
        if z is not None and z.shape != x.shape:
            raise ValueError(f"z must have the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")
        dtype = x.dtype
        y = x.float()
        if z is not None and not self.norm_before_gate:
            y = y * F.silu(z.float())
        groups = y.unflatten(-1, (-1, self.group_size))
        groups = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)
        y = groups.flatten(-2) * self.weight.float()
        if z is not None and self.norm_before_gate:
            y = y * F.silu(z.float())
        return y.to(dtype)

    def extra_repr(self) -> str:
        return (f"{self.hidden_size}, eps={self.eps}, group_size={self.group_size}, "
                f"norm_before_gate={self.norm_before_gate}")


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of a channels-first tensor: (batch, channels, *spatial) -> same shape
    (ConvNeXt's ``data_format="channels_first"``, timm's ``LayerNorm2d``, in N-d).

    Parameters ``weight`` and ``bias`` (channels,), as ``nn.LayerNorm(channels)``, whose state dict loads.
    """

    def __init__(self, channels: int, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(channels, eps=eps, elementwise_affine=elementwise_affine, bias=bias, device=device,
                         dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, channels, *spatial) -> (batch, channels, *spatial)."""
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)
