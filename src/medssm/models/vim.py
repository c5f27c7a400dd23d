"""Vision Mamba (Vim; Zhu et al. 2024, "Vision Mamba: Efficient Visual Representation Learning with
Bidirectional State Space Model", arXiv:2401.09417), for spatial_dims 1, 2 or 3, with the option of
Stochastic Layer-Wise Shuffle (Huang et al. 2024, "Stochastic Layer-Wise Shuffle: A Good Practice to Improve
Vision Mamba Training", arXiv:2408.17081).

Structure (:class:`VisionMamba`)::

    x (batch, in, *S) -> PatchEmbed (patch_size, no norm) -> grid (batch, D, *G), G = ceil(S / P)
    grid += pos_embed's grid part, resized to G ((bi/tri)linear) when G differs from the default grid G0
    cls = cls_token + pos_embed's class-token entry
    layer l = 0 .. depth-1 (a VimBlock: t + drop_path(BiMamba(RMSNorm(t)))):
        the grid's T = prod(G) tokens in the route's K orders (Vim: "raster", K = 1), each sequence with the
        class token inserted in the MIDDLE, at index T // 2 -> (batch * K, T + 1, D) -> the block
        -> patch tokens back on the grid (mean over the K orders), class token = mean over the K orders
    logits = head(RMSNorm(cls))

Stochastic Layer-Wise Shuffle (``layer_shuffle=True``): in training, layer l permutes the order of its T
patch tokens (one uniform random permutation per call, shared by the batch; the class token stays at the
middle) with probability ``p_l = l / (depth - 1) * shuffle_prob`` (0 for the first layer, ``shuffle_prob``
for the last; 0 everywhere when depth is 1), and its outputs are put back in the original order. In eval
mode it is the identity, and it adds no parameters. Draws use ``self.generator`` when set (a seeded
``torch.Generator`` on the CPU), else the global RNG; ``self.last_shuffled`` lists which layers shuffled in
the last forward.

As released (hustvl/Vim, vim/models_mamba.py, ``if_cls_token=True, use_middle_cls_token=True,
bimamba_type="v2", if_devide_out=True, rms_norm=True, final_pool_type="mean"`` on one token): the middle
class token, the learned position embedding over patches and class token (``pos_embed`` (1, T0 + 1, D), the
class token's entry at index T0 // 2), Vim's parameter names (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``layers.{i}.norm``, ``layers.{i}.mixer.*`` with the ``*_b`` backward branch, ``norm_f``,
``head``). Vim-Ti is ``embed_dim=192, depth=24, patch_size=16, img_size=224`` (7M parameters at 1000
classes). Differences: any input size (the released model fails when the patch grid differs from the one
it was built for; here the position embedding is interpolated); N-d; ``route=`` (K > 1 routes run the same
block over each order and average); pre-norm residual blocks (equal to Vim's add-then-norm chaining); no
residual in fp32, no ImageNet weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import PatchEmbed, VimBlock
from ..layers.grid import check_grid
from ..layers.norm import RMSNormGated
from ..layers.token_routes import build_route
from .registry import register_model

DEFAULT_IMG_SIZE = {1: (256,), 2: (28, 28), 3: (28, 28, 28)}
_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


def shuffle_probabilities(depth: int, shuffle_prob: float) -> list[float]:
    """Stochastic Layer-Wise Shuffle's per-layer probabilities ``l / (depth - 1) * shuffle_prob``, rising from
    0 at the first layer to ``shuffle_prob`` at the last (all 0 for a single layer)."""
    if not 0.0 <= shuffle_prob <= 1.0:
        raise ValueError(f"shuffle_prob must be in [0, 1], got {shuffle_prob}")
    return [layer / (depth - 1) * shuffle_prob if depth > 1 else 0.0 for layer in range(depth)]


def resize_pos_embed(pos_embed: torch.Tensor, grid0: Sequence[int], grid: Sequence[int],
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split Vim's pos_embed (1, T0 + 1, D) (class-token entry at T0 // 2) into the class token's (1, 1, D) and
    the patches' on ``grid``, (1, D, *grid): the patches' entries on the default grid ``grid0`` resized by
    (bi/tri)linear interpolation (align_corners=False) when ``grid`` differs."""
    middle = (pos_embed.shape[1] - 1) // 2  # T0 // 2
    cls_pos = pos_embed[:, middle:middle + 1]
    patches = torch.cat((pos_embed[:, :middle], pos_embed[:, middle + 1:]), dim=1)
    patches = patches.transpose(1, 2).reshape(1, -1, *grid0)
    if tuple(grid) != tuple(grid0):
        patches = F.interpolate(patches, size=tuple(grid), mode=_INTERPOLATION[len(grid0)], align_corners=False)
    return cls_pos, patches


class VisionMamba(nn.Module):
    """Vim classifier: (batch, in_channels, *spatial) -> logits (batch, out_channels), spatial_dims 1, 2 or 3,
    any spatial size (see the module docstring).

    Args:
        spatial_dims, in_channels, out_channels: MONAI's meaning.
        img_size: the input size the position embedding is laid out for (default 256 in 1D, 28 in 2D/3D);
            other sizes interpolate it. patch_size: patch edge (one int or one per axis).
        embed_dim, depth: token width and number of Vim blocks. d_state, expand, d_conv: the BiMamba mixers'.
        route: the order(s) the patch tokens are scanned in (default "raster", Vim's).
        layer_shuffle, shuffle_prob: Stochastic Layer-Wise Shuffle and its last layer's probability.
        drop_path_rate: stochastic depth at the last block (rising linearly). dropout: before the head.
        scan_backend: selective_scan backend. ssm: False removes the selective scans (the gated-CNN control).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 img_size: int | Sequence[int] | None = None, patch_size: int | Sequence[int] = 4,
                 embed_dim: int = 64, depth: int = 8, d_state: int = 16, expand: float = 2.0, d_conv: int = 4,
                 route: str = "raster", layer_shuffle: bool = False, shuffle_prob: float = 0.5,
                 drop_path_rate: float = 0.0, dropout: float = 0.0, scan_backend: str = "auto",
                 ssm: bool = True) -> None:
        super().__init__()
        if depth < 1 or embed_dim < 1:
            raise ValueError(f"depth and embed_dim must be positive, got depth={depth}, embed_dim={embed_dim}")
        self.patch_embed = PatchEmbed(spatial_dims, in_channels, embed_dim, patch_size, norm=False)
        self.spatial_dims, self.in_channels, self.embed_dim = spatial_dims, in_channels, embed_dim
        img = DEFAULT_IMG_SIZE[spatial_dims] if img_size is None else img_size
        img = (img,) * spatial_dims if isinstance(img, int) else tuple(img)
        if len(img) != spatial_dims:
            raise ValueError(f"img_size needs one value or {spatial_dims}, got {img_size!r}")
        self.grid0 = tuple(-(-n // p) for n, p in zip(img, self.patch_embed.patch_size, strict=True))
        self.route = build_route(route, spatial_dims)
        self.layer_shuffle = layer_shuffle
        self.shuffle_probs = shuffle_probabilities(depth, shuffle_prob)
        self.generator: torch.Generator | None = None
        self.last_shuffled: list[bool] = []

        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, int(torch.tensor(self.grid0).prod()) + 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList(
            VimBlock(1, embed_dim, d_state=d_state, d_conv=d_conv, expand=expand, drop_path=rate,
                     scan_backend=scan_backend, ssm=ssm) for rate in rates)
        self.norm_f = RMSNormGated(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, out_channels)

    def _orders(self, layer: int, grid: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The route's orders (K, T) for this layer, their token positions permuted when the layer shuffles."""
        orders = self.route.orders(grid, device)
        shuffle = self.layer_shuffle and self.training and self.shuffle_probs[layer] > 0
        if shuffle:
            shuffle = bool(torch.rand(1, generator=self.generator) < self.shuffle_probs[layer])
        self.last_shuffled.append(shuffle)
        if not shuffle:
            return orders
        perm = torch.randperm(orders.shape[1], generator=self.generator).to(device)
        return orders[:, perm]

    def run_layer(self, block: nn.Module, grid: torch.Tensor, cls: torch.Tensor,
                  orders: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Vim block over grid (batch, D, *G) and class token (batch, 1, D) with the patch tokens read in
        ``orders`` (K, T) (sequence position i of order k is grid index orders[k, i]) and the class token in the
        middle of each sequence: returns the new grid (mean over the K orders) and class token."""
        batch, dim, shape = grid.shape[0], grid.shape[1], grid.shape[2:]
        num_orders, length = orders.shape
        middle = length // 2
        seqs = grid.flatten(2)[:, :, orders].permute(0, 2, 3, 1).reshape(batch * num_orders, length, dim)
        cls_k = cls.repeat_interleave(num_orders, dim=0)
        tokens = torch.cat((seqs[:, :middle], cls_k, seqs[:, middle:]), dim=1)
        out = block(tokens.transpose(1, 2)).transpose(1, 2)  # (batch * K, T + 1, D)
        cls = out[:, middle:middle + 1].reshape(batch, num_orders, 1, dim).mean(1)
        seqs = torch.cat((out[:, :middle], out[:, middle + 1:]), dim=1).reshape(batch, num_orders, length, dim)
        inverse = orders.argsort(dim=1)  # grid index j sits at sequence position inverse[k, j]
        grid = torch.stack([seqs[:, k, inverse[k]] for k in range(num_orders)], dim=1).mean(1)
        return grid.transpose(1, 2).reshape(batch, dim, *shape), cls

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> the normalised class token (batch, embed_dim)."""
        check_grid(x, self.spatial_dims, self.in_channels)
        grid = self.patch_embed(x)
        shape = tuple(grid.shape[2:])
        cls_pos, grid_pos = resize_pos_embed(self.pos_embed, self.grid0, shape)
        grid = grid + grid_pos
        cls = (self.cls_token + cls_pos).expand(x.shape[0], -1, -1)
        self.last_shuffled = []
        for layer, block in enumerate(self.layers):
            grid, cls = self.run_layer(block, grid, cls, self._orders(layer, shape, x.device))
        return self.norm_f(cls[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> logits (batch, out_channels)."""
        return self.head(self.dropout(self.forward_features(x)))


@register_model("classification", spatial_dims=(1, 2, 3), input_size={1: (256,), 2: (28, 28), 3: (28, 28, 28)})
def vim(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """Vision Mamba (Zhu et al. 2024): bidirectional Mamba over patch tokens, class token in the middle."""
    return VisionMamba(spatial_dims, in_channels, out_channels, **kwargs)
