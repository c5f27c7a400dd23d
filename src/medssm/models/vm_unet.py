"""VM-UNet and two published variants, one family: a pure vision-Mamba U-Net over patch tokens.

==============  ==================================================================================================
model           paper, and what the constructor switches
==============  ==================================================================================================
vm_unet         Ruan & Xiang 2024, "VM-UNet: Vision Mamba UNet for Medical Image Segmentation", arXiv:2402.02491.
                VSS blocks without MLP, linear patch expanding, skips added.
mhs_vm_unet     Ji 2024, "MHS-VM: Multi-Head Scanning in Parallel Subspaces for Vision Mamba", arXiv:2406.05992.
                VM-UNet with every VSS block replaced by a multi-head scan block (one scan route per head).
msvm_unet       Chen, Yu, Min & Wang 2024, "MSVM-UNet: Multi-Scale Vision Mamba UNet for Medical Image
                Segmentation", arXiv:2408.13735. VSS blocks with MLP in the encoder, multi-scale VSS blocks
                (MS-FFN) in the decoder, large-kernel patch expanding (LKPE), skips concatenated.
==============  ==================================================================================================

Structure (:class:`VMUNet`, L = len(features) levels, C_l = features[i], P = patch_size, D = spatial_dims)::

    x (B, in, *S)                          padded to a multiple of P * 2**(L-1) (cropped back at the end)
    PatchEmbed (P) -> s_0 (B, C_0, *S/P)
    encoder level l: e_l = blocks_l(s_l), depths[l] blocks; s_{l+1} = PatchMerging(e_l) (B, C_{l+1}, *S/(P 2^(l+1)))
    decoder level L-1: y = blocks(e_{L-1}), decoder_depths[0] blocks (0 for MSVM-UNet)
    decoder level l < L-1, decoder_depths[L-1-l] blocks:
        skip="add"    (VM-UNet):   y = blocks(Expand(y + s_{l+1}))          (the released code's skip_list)
        skip="concat" (MSVM-UNet): y = blocks(Linear(cat(Expand(y), e_l)))  (1x1 conv fusion, 2 C_l -> C_l)
    final Expand by P -> (B, C_0 / 4 (linear) or C_0 (large_kernel), *S) -> 1x1 conv -> (B, out, *S)

Expand is :class:`~medssm.layers.PatchExpanding` (``expanding="linear"``: Linear to 2^D C_l, pixel shuffle,
LayerNorm) or :class:`LargeKernelPatchExpanding` (``"large_kernel"``). Stochastic depth rises linearly over the
encoder blocks to ``drop_path_rate`` and falls back over the decoder blocks (VM-UNet's rule).

VM-UNet, as released (JCruan519/VM-UNet, models/vmunet): with ``features=(96, 192, 384, 768)``,
``in_channels=3``, ``out_channels=9`` the parameter count equals the released VSSM's 27,427,761 (the paper's
27.43M): VSSBlock = ``x + dp(SS2D(LN(x)))``, no MLP; decoder depths (2, 2, 2, 1), the first at the bottleneck;
the skip added at level l+1 is the *input* of encoder level l+1 (the merged features), added before expanding,
and the patch-embedding output is never used as a skip -- all as the released code does. Differences: any
input size (padding), N-d (3D with route "tri_oriented" by default), our scan backends instead of the CUDA
kernel, no 1 -> 3 channel repeat and no sigmoid (logits out).

MHS-VM, as released (PixDeep/MHS-VM): VM-UNet's skeleton with the mixer swapped, four heads (its
config's head_num 4). Here each head is :class:`~medssm.layers.MultiHeadScanBlock`'s (see its docstring for
the differences from the released per-head scan and the offline-searched route dictionary, which we replace
by named routes: default ``("cross", "snake", "local", "dilated")``; ``route=`` sets every head's route).

MSVM-UNet: followed from the paper and its released code (gndlwch2w/msvm-unet, model/decoder.py):
MS-FFN = fc1 -> GELU -> ``h + sum_k DWConv_k(h)`` (kernels (1, 3, 5), no bias, in the released code) -> fc2,
hidden 4 C; LKPE = 1x1 conv C -> 2^D C/2 -> BatchNorm -> ReLU -> depthwise k x k conv (k=3 in the released
code; ``lk_kernel``) -> pixel shuffle -> LayerNorm; final LKPE by 4 keeps C_0 channels (16 C_0 before the
shuffle in 2D), then a 1x1 conv; skips concatenated after upsampling and fused by a 1x1 conv; three decoder
levels of 2 blocks, none at the bottleneck. Guessed / changed: the released encoder is an ImageNet-pretrained
VMamba-v2 "tiny_0230s" (conv stem, depths (2, 2, 8, 2), d_state 1, expand 1, no z gate); here it is VM-UNet's
encoder (patch embedding, ``depths``, d_state 16, expand 2) with VSS blocks that keep VMamba's MLP (mlp_ratio
4) -- pass depths=(2, 2, 8, 2), d_state=1, expand=1 to come closer. Kernel sizes other than the released ones
(e.g. (3, 5, 7)) are a ``ms_kernels`` argument away.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..layers import MultiHeadScanBlock, PatchEmbed, PatchExpanding, PatchMerging, VSSBlock, pad_to_multiple
from ..layers.factories import conv_nd, norm_nd
from ..layers.grid import check_grid
from .registry import register_model

BLOCKS = ("vss", "mhs", "msvss")
EXPANDINGS = ("linear", "large_kernel")
SKIPS = ("add", "concat")


def default_route(spatial_dims: int) -> str:
    """VMamba's four-way cross scan in 2D; in 3D the three orientations of SegMamba (the six-way cross is
    twice the scan work)."""
    return {2: "cross", 3: "tri_oriented"}[spatial_dims]


class MultiScaleFFN(nn.Module):
    """MSVM-UNet's multi-scale feed-forward network on channels-last tokens: (batch, *spatial, dim) -> same.

    ``fc2(ms(drop(act(fc1(x)))))`` with ``ms(h) = h + sum_k DWConv_k(h)`` (depthwise, bias-free, centred,
    one conv per kernel size in ``kernel_sizes``, on the grid), then dropout. Parameter names follow the
    released MS_MLP: ``fc1``, ``multiscale_conv.dw_convs.i``, ``fc2``.
    """

    def __init__(self, spatial_dims: int, dim: int, mlp_ratio: float = 4.0, kernel_sizes: Sequence[int] = (1, 3, 5),
                 drop: float = 0.0) -> None:
        super().__init__()
        if any(k % 2 != 1 for k in kernel_sizes) or not kernel_sizes:
            raise ValueError(f"kernel_sizes must be odd (centred convs), got {tuple(kernel_sizes)}")
        hidden = max(1, int(dim * mlp_ratio))
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.multiscale_conv = nn.Module()
        self.multiscale_conv.dw_convs = nn.ModuleList(
            conv_nd(spatial_dims, hidden, hidden, k, padding=k // 2, groups=hidden, bias=False) for k in kernel_sizes)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, *spatial, dim) -> (batch, *spatial, dim)."""
        h = self.drop(self.act(self.fc1(x))).movedim(-1, 1)
        h = h + sum(conv(h) for conv in self.multiscale_conv.dw_convs)
        return self.drop(self.fc2(h.movedim(1, -1)))


class MultiScaleVSSBlock(VSSBlock):
    """MSVM-UNet's MSVSS block: ``x + dp(op(norm(x)))``, ``x + dp(MultiScaleFFN(norm2(x)))``, op the
    multi-route Mamba mixer (SS2D with route "cross" in 2D). (batch, dim, *spatial) -> same shape.

    Args: as :class:`~medssm.layers.VSSBlock`, with ``mlp_ratio`` the MS-FFN's hidden width / dim and
    ``kernel_sizes`` its depthwise kernels.
    """

    def __init__(self, spatial_dims: int, dim: int, mlp_ratio: float = 4.0, kernel_sizes: Sequence[int] = (1, 3, 5),
                 **kwargs) -> None:
        super().__init__(spatial_dims, dim, mlp_ratio=0.0, **kwargs)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MultiScaleFFN(spatial_dims, dim, mlp_ratio, kernel_sizes)


def _pixel_shuffle(x: torch.Tensor, scale: int) -> torch.Tensor:
    """(batch, scale^D * C, *spatial) -> (batch, C, *(scale * spatial)); channels read as (offset along axis 0,
    ..., offset along the last axis, C), C fastest (Swin-Unet's "b h w (p1 p2 c) -> b (h p1) (w p2) c")."""
    batch, channels, *sizes = x.shape
    d = len(sizes)
    out = channels // scale**d
    x = x.reshape(batch, *[scale] * d, out, *sizes)
    order = [a for i in range(d) for a in (2 + d + i, 1 + i)]  # (n0, s0, n1, s1, ...)
    return x.permute(0, 1 + d, *order).reshape(batch, out, *[n * scale for n in sizes])


class LargeKernelPatchExpanding(nn.Module):
    """MSVM-UNet's large-kernel patch expanding (LKPE; FLKPE with ``scale=4``): (batch, dim, *spatial) ->
    (batch, out_dim, *(scale * spatial)).

    1x1 conv dim -> scale^D * out_dim (with bias), BatchNorm, ReLU, depthwise ``kernel_size`` conv, pixel
    shuffle onto the finer grid, LayerNorm(out_dim). Names follow the released LKPE (``expand.0`` .. ``expand.3``,
    ``norm``). BatchNorm needs more than one value per channel when training (batch 1 on a one-position grid
    fails, as in the released code).
    """

    def __init__(self, spatial_dims: int, dim: int, out_dim: int | None = None, scale: int = 2,
                 kernel_size: int = 3) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.dim = dim
        self.out_dim = dim // 2 if out_dim is None else out_dim
        self.scale = scale
        if kernel_size % 2 != 1 or self.out_dim < 1:
            raise ValueError(f"kernel_size must be odd and out_dim positive, got {kernel_size}, {self.out_dim}")
        hidden = scale**spatial_dims * self.out_dim
        self.expand = nn.Sequential(
            conv_nd(spatial_dims, dim, hidden, 1), norm_nd("batch", spatial_dims, hidden), nn.ReLU(inplace=True),
            conv_nd(spatial_dims, hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden))
        self.norm = nn.LayerNorm(self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_grid(x, self.spatial_dims, self.dim)
        x = _pixel_shuffle(self.expand(x), self.scale)
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class VMUNet(nn.Module):
    """VM-UNet family: (batch, in_channels, *spatial) -> logits (batch, out_channels, *spatial), spatial_dims
    2 or 3, any spatial size. See the module docstring for the structure and the three published settings.

    Args:
        spatial_dims, in_channels, out_channels: MONAI's meaning.
        features: channels per level (VM-UNet's paper: (96, 192, 384, 768)).
        depths: encoder blocks per level. decoder_depths: decoder blocks per level, bottleneck first.
        patch_size: patch embedding stride (and the final expanding's scale).
        encoder_block, decoder_block: "vss" (VSSBlock, MLP if mlp_ratio > 0), "mhs" (MultiHeadScanBlock) or
            "msvss" (:class:`MultiScaleVSSBlock`); decoder_block None = encoder_block.
        expanding: "linear" (PatchExpanding) or "large_kernel" (:class:`LargeKernelPatchExpanding`).
        skip: "add" (VM-UNet) or "concat" (MSVM-UNet); see the module docstring.
        route: scan route of every Mamba block (default "cross" in 2D, "tri_oriented" in 3D); for "mhs" blocks
            it sets every head's route. routes: the "mhs" blocks' route per head (default MHS-VM's four).
        mlp_ratio: the MLP of "vss"/"mhs" blocks (0: none, VM-UNet). ffn_ratio, ms_kernels: the MS-FFN's.
        lk_kernel: LKPE's depthwise kernel. d_state, expand: every mixer's state size and expansion.
        drop_path_rate: stochastic depth at the deepest block. scan_backend: selective_scan backend.
        ssm: False removes the selective scan from every mixer (the gated-CNN control).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] = (24, 48, 96, 192), depths: Sequence[int] = (2, 2, 2, 2),
                 decoder_depths: Sequence[int] = (2, 2, 2, 1), patch_size: int = 4, encoder_block: str = "vss",
                 decoder_block: str | None = None, expanding: str = "linear", skip: str = "add",
                 route: str | None = None, routes: Sequence[str] | None = None, mlp_ratio: float = 0.0,
                 ffn_ratio: float = 4.0, ms_kernels: Sequence[int] = (1, 3, 5), lk_kernel: int = 3,
                 d_state: int = 16, expand: float = 2.0, drop_path_rate: float = 0.2, scan_backend: str = "auto",
                 ssm: bool = True) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"VMUNet supports spatial_dims 2 or 3, got {spatial_dims!r}")
        decoder_block = encoder_block if decoder_block is None else decoder_block
        for name, value, choices in (("encoder_block", encoder_block, BLOCKS), ("decoder_block", decoder_block, BLOCKS),
                                     ("expanding", expanding, EXPANDINGS), ("skip", skip, SKIPS)):
            _check_choice(name, value, choices)
        n = len(features)
        if n < 2 or len(depths) != n or len(decoder_depths) != n:
            raise ValueError(f"features, depths and decoder_depths need one entry per level (>= 2), got "
                             f"{tuple(features)}, {tuple(depths)}, {tuple(decoder_depths)}")
        self.spatial_dims, self.skip = spatial_dims, skip
        self.stride = patch_size * 2 ** (n - 1)
        self.block_kwargs = dict(route=route or default_route(spatial_dims), routes=routes, mlp_ratio=mlp_ratio,
                                 ffn_ratio=ffn_ratio, ms_kernels=tuple(ms_kernels), d_state=d_state, expand=expand,
                                 scan_backend=scan_backend, ssm=ssm, explicit_route=route is not None)
        enc_rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        dec_rates = torch.linspace(0, drop_path_rate, sum(decoder_depths)).tolist()[::-1]

        self.patch_embed = PatchEmbed(spatial_dims, in_channels, features[0], patch_size)
        self.encoder = self._stages(encoder_block, features, depths, enc_rates)
        self.downsamples = nn.ModuleList(PatchMerging(spatial_dims, features[i], features[i + 1]) for i in range(n - 1))
        self.decoder = self._stages(decoder_block, features[::-1], decoder_depths, dec_rates)
        self.upsamples = nn.ModuleList(self._expanding(expanding, features[i + 1], features[i], 2, lk_kernel)
                                       for i in reversed(range(n - 1)))
        self.fuse = None
        if skip == "concat":
            self.fuse = nn.ModuleList(conv_nd(spatial_dims, 2 * features[i], features[i], 1)
                                      for i in reversed(range(n - 1)))
        final_dim = features[0] // 4 if expanding == "linear" else features[0]
        self.final_up = self._expanding(expanding, features[0], final_dim, patch_size, lk_kernel)
        self.head = conv_nd(spatial_dims, final_dim, out_channels, 1)

    def _expanding(self, kind: str, dim: int, out_dim: int, scale: int, kernel: int) -> nn.Module:
        if kind == "linear":
            return PatchExpanding(self.spatial_dims, dim, out_dim, scale=scale)
        return LargeKernelPatchExpanding(self.spatial_dims, dim, out_dim, scale=scale, kernel_size=kernel)

    def _stages(self, kind: str, features: Sequence[int], depths: Sequence[int],
                rates: Sequence[float]) -> nn.ModuleList:
        stages, start = nn.ModuleList(), 0
        for dim, depth in zip(features, depths, strict=True):
            stages.append(nn.Sequential(*(self._block(kind, dim, rates[start + i]) for i in range(depth))))
            start += depth
        return stages

    def _block(self, kind: str, dim: int, drop_path: float) -> nn.Module:
        kw = self.block_kwargs
        common = dict(d_state=kw["d_state"], expand=kw["expand"], drop_path=drop_path,
                      scan_backend=kw["scan_backend"], ssm=kw["ssm"])
        if kind == "vss":
            return VSSBlock(self.spatial_dims, dim, route=kw["route"], mlp_ratio=kw["mlp_ratio"], **common)
        if kind == "msvss":
            return MultiScaleVSSBlock(self.spatial_dims, dim, mlp_ratio=kw["ffn_ratio"],
                                      kernel_sizes=kw["ms_kernels"], route=kw["route"], **common)
        routes = kw["routes"]
        if routes is None:
            heads = ("cross", "snake", "local", "dilated")
            routes = (kw["route"],) * len(heads) if kw["explicit_route"] else heads
        return MultiHeadScanBlock(self.spatial_dims, dim, routes=tuple(routes), mlp_ratio=kw["mlp_ratio"], **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> (batch, out_channels, *spatial)."""
        if x.dim() != self.spatial_dims + 2:
            raise ValueError(f"x must be (batch, channels, *spatial) with {self.spatial_dims} spatial dims, "
                             f"got {tuple(x.shape)}")
        spatial = x.shape[2:]
        s = self.patch_embed(pad_to_multiple(x, self.stride))
        inputs, outputs = [], []
        for level, stage in enumerate(self.encoder):
            if level:
                s = self.downsamples[level - 1](outputs[-1])
            inputs.append(s)
            outputs.append(stage(s))
        y = self.decoder[0](outputs[-1])
        for i, level in enumerate(reversed(range(len(self.encoder) - 1))):
            if self.fuse is None:
                y = self.upsamples[i](y + inputs[level + 1])
            else:
                y = self.fuse[i](torch.cat([self.upsamples[i](y), outputs[level]], dim=1))
            y = self.decoder[i + 1](y)
        y = self.head(self.final_up(y))
        return y[(..., *(slice(0, size) for size in spatial))]


_SIZES = {2: (32, 32), 3: (32, 32, 32)}  # the total stride: the smallest unpadded inputs (quick tests)


@register_model("segmentation", spatial_dims=(2, 3), input_size=_SIZES)
def vm_unet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """VM-UNet (Ruan & Xiang 2024): VSS-block U-Net over 4x4 patches, skips added; paper widths by features=."""
    return VMUNet(spatial_dims, in_channels, out_channels, **kwargs)


@register_model("segmentation", spatial_dims=(2, 3), input_size=_SIZES)
def mhs_vm_unet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """MHS-VM (Ji 2024): VM-UNet with multi-head scan blocks, one scan route per head."""
    kwargs.setdefault("encoder_block", "mhs")
    return VMUNet(spatial_dims, in_channels, out_channels, **kwargs)


@register_model("segmentation", spatial_dims=(2, 3), input_size=_SIZES)
def msvm_unet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """MSVM-UNet (Chen et al. 2024): multi-scale VSS decoder blocks, large-kernel patch expanding, concat skips."""
    levels = len(kwargs.get("features", (0,) * 4))
    defaults = dict(encoder_block="vss", decoder_block="msvss", mlp_ratio=4.0, expanding="large_kernel",
                    skip="concat", decoder_depths=(0,) + (2,) * (levels - 1))
    return VMUNet(spatial_dims, in_channels, out_channels, **{**defaults, **kwargs})
