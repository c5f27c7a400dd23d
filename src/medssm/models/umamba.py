"""U-Mamba (Ma, Li & Wang 2024, "U-Mamba: Enhancing Long-range Dependency for Biomedical Image
Segmentation", arXiv:2401.04722): U-Mamba_Bot and U-Mamba_Enc, for spatial_dims 2 and 3.

An nnU-Net-style residual U-Net with Mamba layers. For an input (B, in_channels, *S) and widths f_0..f_{n-1}
(default (32, 64, 128, 256) in 2D, (16, 32, 64, 128) in 3D; total stride 2**(n - 1))::

    pad S to a multiple of 2**(n - 1)
    stem      ResBlock(in_channels -> f_0, 1x1 projection) + (blocks_down[0] - 1) x ResBlock(f_0)   (B, f_0, S)
    encoder   stage s: ResBlock(f_{s-1} -> f_s, stride 1 if s == 0 else 2, 1x1 projection)
              + (blocks_down[s] - 1) x ResBlock(f_s)                                     (B, f_s, S / 2**s)
              Enc: a MambaLayer after every stage; Bot: one MambaLayer after the last (the bottleneck)
    decoder   per level, deepest first: transposed conv (kernel = stride = 2) f_{s+1} -> f_s, concatenate
              the stage-s skip, ResBlock(2 f_s -> f_s, 1x1 projection) + (blocks_up - 1) x ResBlock(f_s),
              a 1x1 segmentation head f_s -> out_channels                               (B, out, S / 2**s)
    crop back to S

ResBlock: ``act(norm(conv3(act(norm(conv3(x))))) + skip)``, skip = x or a strided 1x1 conv; InstanceNorm
(affine) and LeakyReLU(0.01), convs with biases (the released nnU-Net plans). MambaLayer: ``Mamba(LN(t))``
over the flattened tokens t (B, T, C), no residual, run in fp32 with autocast disabled, as released.

Blocks per stage, by default the released rule from nnU-Net's two per stage: the deeper half of the encoder
stages (s >= ceil(n / 2)) get one block, and so do the decoder levels with index >= ceil(n / 2) counted from
the deepest (the highest-resolution ones): n = 4 gives blocks_down (2, 2, 1, 1), blocks_up (2, 2, 1).

Channel tokens (U-Mamba_Enc): the released code decides at construction, from the training patch size,
that a stage whose feature map has no more positions than channels scans the channels instead (tokens =
channels, d_model = the number of positions). Here that static rule applies when ``input_size`` is given
(sizes padded to the total stride); Mamba's d_model at such a stage then depends on input_size, and an input
whose padded size gives another position count there raises a ValueError naming input_size. By default
(``input_size=None``) no stage switches, and any input size works.

Scan route: the released code flattens in raster order (``route="raster"``, the default). Another route runs
each spatial-token Mamba (the same weights) over the route's K orderings and averages them on the grid
(:func:`~medssm.layers.token_routes.mix_along_route`): parameters unchanged, raster exactly the released layer.
Channel-token stages scan the channels and ignore the route.

Deep supervision: with ``deep_supervision=True`` a model in training mode returns nnU-Net's list of logits,
full resolution first, then each coarser decoder level (ceil(S / 2**k) each); in eval mode only the
full-resolution logits. The coarser levels' heads exist only with deep supervision (nnU-Net always builds
them; here every parameter is trained): they are keyed by level (``seg_layers.{i}``, i counted from the
deepest) as in nnU-Net, so a deep-supervision checkpoint loads into a model without it with strict=False.

Differences from the released code (github.com/bowang-lab/U-Mamba, umamba/nnunetv2/nets/UMamba{Bot,Enc}_
{2d,3d}.py): upsampling by transposed convs, as in the paper and the first release (the current files use
nearest interpolation + 1x1 conv: ``upsample="nearest"`` builds that); the 2D files skip the concatenation at
the full-resolution decoder level, here every level concatenates its skip (as in the 3D files and the paper);
strides are 2 on every axis (no anisotropic nnU-Net plans); He initialisation is left to torch's default;
any input size (padding and cropping); ``route=``, ``ssm=`` and ``scan_backend=``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..conventions import check_spatial_dims
from ..layers import Mamba, conv_nd, conv_transpose_nd, norm_nd, pad_to_multiple
from ..layers.grid import channels_last, check_grid
from ..layers.token_routes import build_route, mix_along_route
from ..scans import ScanRoute
from .registry import register_model


class ResBlock(nn.Module):
    """nnU-Net's residual block: (B, in_channels, *S) -> (B, out_channels, *S / stride).
    ``act2(norm2(conv2(act1(norm1(conv1(x))))) + skip(x))``; skip is ``conv3`` (1x1, strided) or identity."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1,
                 projection: bool = False) -> None:
        super().__init__()
        if not projection and (stride != 1 or in_channels != out_channels):
            raise ValueError("a ResBlock that changes size or channels needs projection=True")
        self.conv1 = conv_nd(spatial_dims, in_channels, out_channels, 3, stride=stride, padding=1)
        self.norm1 = norm_nd("instance", spatial_dims, out_channels, affine=True)
        self.act1 = nn.LeakyReLU(0.01)
        self.conv2 = conv_nd(spatial_dims, out_channels, out_channels, 3, padding=1)
        self.norm2 = norm_nd("instance", spatial_dims, out_channels, affine=True)
        self.act2 = nn.LeakyReLU(0.01)
        self.conv3 = conv_nd(spatial_dims, in_channels, out_channels, 1, stride=stride) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(y + (x if self.conv3 is None else self.conv3(x)))


def res_stage(spatial_dims: int, in_channels: int, out_channels: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """A projecting ResBlock then ``blocks - 1`` identity-skip ResBlocks."""
    return nn.Sequential(ResBlock(spatial_dims, in_channels, out_channels, stride, projection=True),
                         *[ResBlock(spatial_dims, out_channels, out_channels) for _ in range(blocks - 1)])


class MambaLayer(nn.Module):
    """``Mamba(LayerNorm(tokens))`` on a grid (B, C, *S) -> (B, C, *S), in fp32 with autocast disabled.

    Spatial tokens (default): T = prod(S) tokens of C features, ordered along ``route``. Channel tokens
    (``channel_tokens`` = the number of positions P it was built for): C tokens of P features; an input with
    another P raises ValueError.
    """

    def __init__(self, spatial_dims: int, channels: int, route: ScanRoute, channel_tokens: int | None = None,
                 d_state: int = 16, d_conv: int = 4, expand: float = 2, ssm: bool = True,
                 scan_backend: str = "auto") -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.route = route
        self.channel_tokens = channel_tokens
        d_model = channels if channel_tokens is None else channel_tokens
        self.norm = nn.LayerNorm(d_model)
        self.mamba = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, scan_backend=scan_backend,
                           ssm=ssm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_grid(x, self.spatial_dims, self.channels)
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.channel_tokens is None:
                return mix_along_route(self.mamba, channels_last(self.norm, x), self.route)
            positions = math.prod(x.shape[2:])
            if positions != self.channel_tokens:
                raise ValueError(f"this channel-token Mamba layer was built for {self.channel_tokens} positions "
                                 f"(from input_size), got a feature map {tuple(x.shape[2:])} of {positions}: "
                                 f"build the model with input_size = the size you feed it")
            return self.mamba(self.norm(x.flatten(2))).view_as(x)


class Upsample(nn.Module):
    """The released code's current upsampling: nearest x2, then a 1x1 conv (B, C_in, *S) -> (B, C_out, *2S)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims, in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def released_blocks(num_stages: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The released (blocks_down, blocks_up) for ``num_stages`` levels; blocks_up deepest first."""
    down = tuple(1 if s >= math.ceil(num_stages / 2) else 2 for s in range(num_stages))
    up = tuple(1 if s >= math.ceil((num_stages - 1) / 2 + 0.5) else 2 for s in range(num_stages - 1))
    return down, up


def channel_token_positions(input_size: Sequence[int] | None, features: Sequence[int]) -> list[int | None]:
    """Per stage, the position count P if the released rule (P <= channels) switches it to channel tokens
    for ``input_size`` (padded to the total stride), else None; all None when input_size is None."""
    if input_size is None:
        return [None] * len(features)
    stride = 2 ** (len(features) - 1)
    padded = [math.ceil(n / stride) * stride for n in input_size]
    positions = [math.prod(n // 2**s for n in padded) for s in range(len(features))]
    return [p if p <= c else None for p, c in zip(positions, features, strict=True)]


class UMamba(nn.Module):
    """U-Mamba (see the module docstring): (batch, in_channels, *spatial) -> logits (batch, out_channels,
    *spatial) (or a list of them, see deep_supervision), spatial_dims 2 or 3, any spatial size.

    Args:
        spatial_dims, in_channels, out_channels: MONAI's meaning.
        features: widths per level (default (32, 64, 128, 256) in 2D, (16, 32, 64, 128) in 3D; the released
            2D nnU-Net plans use min(32 * 2**s, 512), e.g. (32, 64, 128, 256, 512, 512, 512)).
        mamba: "bottleneck" (U-Mamba_Bot) or "encoder" (U-Mamba_Enc, after every stage).
        blocks_down, blocks_up: ResBlocks per encoder stage / decoder level (deepest first); default the
            released rule (:func:`released_blocks`).
        deep_supervision: return nnU-Net's list of logits in training mode.
        input_size: the training patch size; with mamba="encoder", stages with no more positions than
            channels scan channel tokens (the released rule). None: never.
        upsample: "transpose" (paper) or "nearest" (nearest + 1x1 conv, the current release).
        route: scan route of the spatial-token Mamba layers (default raster, the paper's). ssm: False removes
            the selective scan (the gated-CNN control). d_state, d_conv, expand: the Mamba arguments.
        scan_backend: selective_scan backend.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 features: Sequence[int] | None = None, mamba: str = "bottleneck",
                 blocks_down: Sequence[int] | None = None, blocks_up: Sequence[int] | None = None,
                 deep_supervision: bool = False, input_size: Sequence[int] | None = None,
                 upsample: str = "transpose", route: str | ScanRoute = "raster", d_state: int = 16,
                 d_conv: int = 4, expand: float = 2, ssm: bool = True, scan_backend: str = "auto") -> None:
        super().__init__()
        if check_spatial_dims(spatial_dims) not in (2, 3):
            raise ValueError(f"U-Mamba supports spatial_dims 2 and 3, got {spatial_dims}")
        features = tuple(features or ((32, 64, 128, 256) if spatial_dims == 2 else (16, 32, 64, 128)))
        n = len(features)
        default_down, default_up = released_blocks(n)
        blocks_down, blocks_up = tuple(blocks_down or default_down), tuple(blocks_up or default_up)
        if n < 2 or len(blocks_down) != n or len(blocks_up) != n - 1 or min(blocks_down + blocks_up) < 1:
            raise ValueError(f"need >= 2 features, one blocks_down per level and len - 1 blocks_up (all >= 1), got "
                             f"features={features}, blocks_down={blocks_down}, blocks_up={blocks_up}")
        if mamba not in ("bottleneck", "encoder") or upsample not in ("transpose", "nearest"):
            raise ValueError(f"mamba must be 'bottleneck' or 'encoder' and upsample 'transpose' or 'nearest', got "
                             f"{mamba!r}, {upsample!r}")
        if input_size is not None and len(input_size) != spatial_dims:
            raise ValueError(f"input_size needs {spatial_dims} sizes, got {tuple(input_size)}")
        self.spatial_dims, self.in_channels, self.features = spatial_dims, in_channels, features
        self.stride = 2 ** (n - 1)
        self.deep_supervision = deep_supervision
        self.stem = res_stage(spatial_dims, in_channels, features[0], blocks_down[0])
        self.stages = nn.ModuleList(res_stage(spatial_dims, features[max(s - 1, 0)], features[s], blocks_down[s],
                                              1 if s == 0 else 2) for s in range(n))
        layer = {"route": build_route(route, spatial_dims), "d_state": d_state, "d_conv": d_conv, "expand": expand,
                 "ssm": ssm, "scan_backend": scan_backend}
        tokens = channel_token_positions(input_size, features) if mamba == "encoder" else [None] * n
        self.mamba_layers = nn.ModuleDict({
            str(s): MambaLayer(spatial_dims, features[s], channel_tokens=tokens[s], **layer)
            for s in (range(n) if mamba == "encoder" else [n - 1])})
        self._build_decoder(out_channels, blocks_up, upsample)

    def _build_decoder(self, out_channels: int, blocks_up: Sequence[int], upsample: str) -> None:
        dims, f = self.spatial_dims, self.features
        levels = range(len(f) - 2, -1, -1)  # decoder level s, deepest first
        self.upsamples = nn.ModuleList(
            conv_transpose_nd(dims, f[s + 1], f[s], 2, stride=2) if upsample == "transpose"
            else Upsample(dims, f[s + 1], f[s]) for s in levels)
        self.decoder = nn.ModuleList(res_stage(dims, 2 * f[s], f[s], b) for s, b in zip(levels, blocks_up,
                                                                                        strict=True))
        last = len(f) - 2  # the full-resolution level, counted from the deepest
        self.seg_layers = nn.ModuleDict({str(i): conv_nd(dims, f[s], out_channels, 1) for i, s in enumerate(levels)
                                         if self.deep_supervision or i == last})

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """x: (batch, in_channels, *spatial) -> (batch, out_channels, *spatial); with deep supervision in
        training mode a list, level k (batch, out_channels, *ceil(spatial / 2**k)), full resolution first."""
        check_grid(x, self.spatial_dims, self.in_channels)
        spatial = x.shape[2:]
        y = self.stem(pad_to_multiple(x, self.stride))
        skips = []
        for s, stage in enumerate(self.stages):
            y = stage(y)
            if str(s) in self.mamba_layers:
                y = self.mamba_layers[str(s)](y)
            skips.append(y)
        skips.pop()
        deep = self.deep_supervision and self.training
        outputs = []
        for i, (up, block) in enumerate(zip(self.upsamples, self.decoder, strict=True)):
            y = block(torch.cat((up(y), skips.pop()), dim=1))
            if deep or i == len(self.decoder) - 1:
                outputs.append(self.seg_layers[str(i)](y))
        outputs = [out[(..., *(slice(0, -(-n // 2**k)) for n in spatial))] for k, out in enumerate(outputs[::-1])]
        return outputs if deep else outputs[0]


class UMambaBot(UMamba):
    """U-Mamba_Bot: one Mamba layer on the bottleneck features. Arguments as :class:`UMamba`."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, mamba="bottleneck", **kwargs)


class UMambaEnc(UMamba):
    """U-Mamba_Enc: a Mamba layer after every encoder stage. Arguments as :class:`UMamba`."""

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, mamba="encoder", **kwargs)


@register_model("segmentation", spatial_dims=(2, 3), input_size={2: (32, 32), 3: (16, 16, 16)})
def umamba_bot(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """U-Mamba_Bot (Ma et al. 2024): an nnU-Net residual U-Net with a Mamba layer on the bottleneck."""
    return UMambaBot(spatial_dims, in_channels, out_channels, **kwargs)


@register_model("segmentation", spatial_dims=(2, 3), input_size={2: (32, 32), 3: (16, 16, 16)})
def umamba_enc(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """U-Mamba_Enc (Ma et al. 2024): an nnU-Net residual U-Net with a Mamba layer after every encoder stage."""
    return UMambaEnc(spatial_dims, in_channels, out_channels, **kwargs)
