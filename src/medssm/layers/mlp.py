"""Two-layer MLPs: :class:`Mlp` on the last axis (tokens) and :class:`ConvMlp` on the channel axis of a grid.

Both are fc1 -> act -> dropout -> fc2 -> dropout with timm's/VMamba's parameter names (``fc1``, ``fc2``); the
hidden width is ``hidden_dim``, or ``int(dim * mlp_ratio)`` (at least 1) when it is not given.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .factories import ActLayer, conv_nd


def _hidden_width(dim: int, hidden_dim: int | None, mlp_ratio: float) -> int:
    if hidden_dim is not None:
        if hidden_dim < 1:
            raise ValueError(f"hidden_dim must be positive, got {hidden_dim}")
        return hidden_dim
    if mlp_ratio <= 0:
        raise ValueError(f"mlp_ratio must be positive, got {mlp_ratio}")
    return max(1, int(dim * mlp_ratio))


class Mlp(nn.Module):
    """Linear -> act -> drop -> Linear -> drop on the last axis: (..., dim) -> (..., out_dim) (timm's ``Mlp``).

    Args:
        dim: input width. hidden_dim: hidden width (default ``int(dim * mlp_ratio)``). act_layer: activation
        constructor. drop: dropout probability after the activation and after fc2. out_dim: output width
        (default dim). mlp_ratio: hidden width / dim when hidden_dim is None.
    """

    def __init__(self, dim: int, hidden_dim: int | None = None, act_layer: ActLayer = nn.GELU, drop: float = 0.0,
                 out_dim: int | None = None, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = _hidden_width(dim, hidden_dim, mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim if out_dim is None else out_dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (..., out_dim)."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class ConvMlp(nn.Module):
    """:class:`Mlp` on the channel axis with 1x1(x1) convolutions: (batch, dim, *spatial) -> (batch, out_dim,
    *spatial) (timm's ``ConvMlp``, SegMamba's ``MlpChannel``). Arguments as :class:`Mlp`, plus spatial_dims."""

    def __init__(self, spatial_dims: int, dim: int, hidden_dim: int | None = None, act_layer: ActLayer = nn.GELU,
                 drop: float = 0.0, out_dim: int | None = None, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = _hidden_width(dim, hidden_dim, mlp_ratio)
        self.fc1 = conv_nd(spatial_dims, dim, hidden, 1)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = conv_nd(spatial_dims, hidden, dim if out_dim is None else out_dim, 1)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, dim, *spatial) -> (batch, out_dim, *spatial)."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))
