"""TransMIL (Shao et al. 2021, "TransMIL: Transformer based Correlated Multiple Instance Learning for Whole
Slide Image Classification", NeurIPS 2021, arXiv:2106.00908): the TPT module. The bag (plus a class token) is
mixed by two transformer layers with Nystrom attention (Xiong et al. 2021, arXiv:2102.03902), between them
the PPEG position encoding (the bag squared into a grid, 7x7, 5x5 and 3x3 depthwise convs summed with it);
the class token's final state feeds a linear head.

As the released code (szc19990412/TransMIL, whose attention is lucidrains' ``nystrom_attention``): width 512,
8 heads of 64, 256 landmarks, 6 Moore-Penrose iterations, the 33-tap depthwise residual conv on the values,
output dropout 0.1, pre-norm residual layers, the grid filled up by repeating the first instances.
``attention="exact"`` swaps the Nystrom approximation for exact softmax attention (torch's
``scaled_dot_product_attention``) with everything else unchanged: the quadratic-cost reference.

Difference from the released code: a sequence no longer than the number of landmarks gets exact attention.
The released code zero-pads it to the landmark count (256), so that every token and each padding zero is a
landmark, and runs the Nystrom formula on that; with every token a landmark the formula approximates exact
attention (its pseudo-inverse by 6 iterations) at the cost of 6 x 4 products of 256 x 256 matrices per head,
which on a CPU dominates small bags (the colon set's ~230 instances: ~10x the rest of the model).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.mil import InstanceProjection, build_encoder, encode_bag, resolve_sizes, xavier_init
from .registry import register_model

ATTENTIONS = ("nystrom", "exact")


def iterative_pinv(x: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of a batch of square matrices (..., m, m) by the iteration of Razavi et al.
    2014 that Nystromformer uses (initial guess x^T / (max column sum * max row sum) over the whole batch)."""
    absolute = x.abs()
    z = x.transpose(-1, -2) / (absolute.sum(-1).max() * absolute.sum(-2).max())
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(nn.Module):
    """Multi-head self-attention, Nystrom-approximated (or exact): (batch, N, dim) -> (batch, N, dim), and
    with ``return_first_row`` the attention row of token 0 averaged over heads (batch, N).

    Nystrom: the sequence is zero-padded at the front to a multiple of ``landmarks``; landmarks are means of
    consecutive queries / keys; softmax(Q K^T) V ~ softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V.
    A sequence of at most ``landmarks`` tokens gets exact attention (see the module docstring).
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, landmarks: int = 256,
                 pinv_iterations: int = 6, residual_kernel: int = 33, dropout: float = 0.1,
                 attention: str = "nystrom") -> None:
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        self.heads, self.dim_head, self.landmarks = heads, dim_head, landmarks
        self.pinv_iterations, self.attention = pinv_iterations, attention
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0),
                                  groups=heads, bias=False)

    def forward(self, x: torch.Tensor, return_first_row: bool = False):
        b, n, _ = x.shape
        exact = self.attention == "exact" or n <= self.landmarks  # see the module docstring
        pad = 0 if exact else (-n) % self.landmarks
        x = F.pad(x, (0, 0, pad, 0))
        q, k, v = (t.unflatten(-1, (self.heads, self.dim_head)).transpose(1, 2)
                   for t in self.to_qkv(x).chunk(3, dim=-1))  # (b, heads, N, dim_head)
        if exact:
            out = F.scaled_dot_product_attention(q, k, v)
            row = torch.softmax(q[:, :, :1] @ k.transpose(-1, -2) / math.sqrt(self.dim_head), -1) \
                if return_first_row else None
        else:
            out, row = self._nystrom(q, k, v, pad, return_first_row)
        out = out + self.res_conv(v)
        out = self.to_out(out.transpose(1, 2).flatten(2))[:, pad:]
        if not return_first_row:
            return out
        return out, row[:, :, 0, pad:].mean(1)

    def _nystrom(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, first: int, return_first_row: bool):
        q = q / math.sqrt(self.dim_head)
        m = self.landmarks
        q_land = q.unflatten(2, (m, -1)).mean(3)  # means of consecutive groups of N / m tokens
        k_land = k.unflatten(2, (m, -1)).mean(3)
        kernel1 = torch.softmax(q @ k_land.transpose(-1, -2), -1)  # (b, h, N, m)
        kernel2_inv = iterative_pinv(torch.softmax(q_land @ k_land.transpose(-1, -2), -1), self.pinv_iterations)
        kernel3 = torch.softmax(q_land @ k.transpose(-1, -2), -1)  # (b, h, m, N)
        out = (kernel1 @ kernel2_inv) @ (kernel3 @ v)
        row = (kernel1[:, :, first:first + 1] @ kernel2_inv) @ kernel3 if return_first_row else None
        return out, row


class TransLayer(nn.Module):
    """x + attention(LayerNorm(x)): (batch, N, dim) -> (batch, N, dim)."""

    def __init__(self, dim: int, attention: str = "nystrom", dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, heads=8, dim_head=dim // 8, landmarks=dim // 2, dropout=dropout,
                                     attention=attention)

    def forward(self, x: torch.Tensor, return_first_row: bool = False):
        if not return_first_row:
            return x + self.attn(self.norm(x))
        out, row = self.attn(self.norm(x), return_first_row=True)
        return x + out, row


class PPEG(nn.Module):
    """Pyramid position encoding generator: the tokens after the class token, (batch, 1 + side^2, dim), laid
    on a side x side grid, x + dwconv7(x) + dwconv5(x) + dwconv3(x); the class token passes unchanged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        cls_token, tokens = x[:, :1], x[:, 1:]
        grid = tokens.transpose(1, 2).unflatten(-1, (side, side))
        grid = grid + self.proj(grid) + self.proj1(grid) + self.proj2(grid)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(nn.Module):
    """TransMIL: bag (batch, n, in_channels) features, or (batch, n, in_channels, p, p) patches with an
    ``encoder`` -> (batch, out_channels) logits, for any n >= 1.

    Args:
        in_channels, out_channels, encoder, patch_size: as :class:`~medssm.models.abmil.ABMIL`.
        dim: width (512; 8 heads of dim / 8, dim / 2 landmarks). dropout: of the attention output (0.1).
        attention: "nystrom" (the paper's) or "exact".
    """

    def __init__(self, in_channels: int = 512, out_channels: int = 2, encoder: str | None = None,
                 patch_size: int = 27, dim: int = 512, dropout: float = 0.1, attention: str = "nystrom") -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder, width = build_encoder(encoder, in_channels, patch_size)
        self.project = InstanceProjection(width, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 1e-6)
        self.layer1 = TransLayer(dim, attention, dropout)
        self.pos_layer = PPEG(dim)
        self.layer2 = TransLayer(dim, attention, dropout)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_channels)
        xavier_init(self.project, self.layer1, self.layer2, self.head)

    def forward(self, x: torch.Tensor, return_instance_scores: bool = False):
        """x: a bag -> logits (batch, out_channels); with ``return_instance_scores`` also the class token's
        attention over the instances in the second layer (batch, n), heads averaged, an instance's grid
        copies summed (Nystrom rows are approximations: they need not be positive nor sum to one)."""
        h = self.project(encode_bag(x, self.encoder, self.in_channels))
        n = h.shape[1]
        side = math.isqrt(n - 1) + 1  # ceil(sqrt(n))
        fill = torch.arange(side * side - n, device=h.device) % n  # the grid's free cells repeat the first instances
        h = torch.cat([self.cls_token.expand(h.shape[0], -1, -1), h, h[:, fill]], dim=1)
        h = self.pos_layer(self.layer1(h), side)
        h, row = self.layer2(h, return_first_row=True)
        logits = self.head(self.norm(h)[:, 0])
        if not return_instance_scores:
            return logits
        scores = row[:, 1:n + 1].index_add(1, fill, row[:, n + 1:])
        return logits, scores


@register_model("mil", spatial_dims=(), input_size={None: (64,)})
def transmil(in_channels: int = 512, out_channels: int = 2, encoder: str | None = None, attention: str = "nystrom",
             in_features: int | None = None, num_classes: int | None = None, **kwargs) -> TransMIL:
    """TransMIL (Shao et al. 2021): Nystrom-attention transformer with PPEG position encoding, class token."""
    in_channels, out_channels = resolve_sizes(in_channels, out_channels, in_features, num_classes)
    return TransMIL(in_channels, out_channels, encoder=encoder, attention=attention, **kwargs)
