"""Non-Mamba segmentation baselines from MONAI, registered like the Mamba networks so that the same commands
train, evaluate and count them: ``unet`` (BasicUNet), ``segresnet`` (SegResNet), ``swin_unetr`` (SwinUNETR),
for spatial_dims 2 and 3.

They take no ``route`` or ``ssm`` (they have no selective scan). Each takes any input size: MONAI's
networks need sizes divisible by their total stride (BasicUNet 16, SegResNet 8, SwinUNETR 32), so the input
is zero-padded on the high side to that multiple and the logits are cropped back; where that leaves a single
position at an instance-normed bottleneck (BasicUNet, SwinUNETR: torch refuses to instance-normalise one
position), the last axis gets one more multiple. The classes subclass MONAI's, so their state dicts have
MONAI's keys and MONAI checkpoints load unchanged.

- ``unet``: MONAI's BasicUNet (a 4-level U-Net, two conv-norm-act per level), features default
  (32, 32, 64, 128, 256, 32) (MONAI's, 1.98M parameters in 2D). ``UNET_0_5M`` = (16, 16, 32, 64, 128, 16)
  gives 0.50M in 2D, the size of the "MONAI BasicUNet of 0.5M parameters, F1 0.818 on DRIVE" anchor.
- ``segresnet``: MONAI's SegResNet (Myronenko 2018, arXiv:1810.11654), init_filters 8, blocks (1, 2, 2, 4)
  / (1, 1, 1), LightM-UNet's convolutional ancestor (same skeleton, convolutions for its Mamba layers).
- ``swin_unetr``: MONAI's SwinUNETR (Hatamizadeh et al. 2022, arXiv:2201.01266), feature_size 24 (MONAI's
  default; the paper's 48 by argument), window 7, depths (2, 2, 2, 2) (MONAI builds it with einops, a medssm
  dependency for that reason).
- ``residual_unet`` (restoration): the same BasicUNet with as many outputs as inputs, added to the input
  (``x + unet(x)``: it predicts the residual, as the Mamba restorers do).

Classification baseline (any spatial_dims 1, 2, 3; MONAI's ResNet takes any input size as it is):

- ``resnet18``: MONAI's ResNet (He et al. 2016, arXiv:1512.03385), basic blocks (2, 2, 2, 2), widths
  (64, 128, 256, 512), shortcut B. ``small_input=True`` (default) is MedMNIST v2's "ResNet-18 (28)" (Yang et
  al. 2023, Sci Data 10:41): conv1 3x3 stride 1 and no max pool, 11.17M parameters in 2D (3.85M 1D, 33.1M
  3D); ``small_input=False`` the ImageNet stem (7x7 stride 2, max pool) for 224-size inputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, SegResNet, SwinUNETR

from ..conventions import check_spatial_dims
from ..layers.restoration import check_same_channels
from .registry import register_model

UNET_FEATURES = (32, 32, 64, 128, 256, 32)
UNET_0_5M = (16, 16, 32, 64, 128, 16)


class PadCropMixin:
    """Make a MONAI network take any input size: zero-pad the input on the high side to multiples of
    ``self.multiple`` (one more multiple on the last axis where that leaves a bottleneck of one position and
    ``self.bottleneck_norm``: an instance norm there needs more than one position in training), and crop the
    logits back. Mixed in before the MONAI class, so the state dict keeps
    MONAI's keys (its checkpoints load unchanged). (batch, in_channels, *spatial) -> (batch, out_channels,
    *spatial)."""

    multiple: int = 1
    bottleneck_norm: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> (batch, out_channels, *spatial)."""
        if x.dim() != self.spatial_dims_ + 2:
            raise ValueError(f"x must have shape (batch, channels, *spatial) with {self.spatial_dims_} spatial "
                             f"dims, got {tuple(x.shape)}")
        sizes = [-(-n // self.multiple) * self.multiple for n in x.shape[2:]]
        if self.bottleneck_norm and max(sizes) == self.multiple:
            sizes[-1] += self.multiple
        pads = [p for n, size in zip(reversed(x.shape[2:]), reversed(sizes), strict=True) for p in (0, size - n)]
        padded = F.pad(x, pads)  # F.pad lists the last axis first
        y = super().forward(padded)
        return y[(..., *(slice(0, n) for n in x.shape[2:]))]


class PaddedBasicUNet(PadCropMixin, BasicUNet):
    """MONAI's BasicUNet for any input size (padded to a multiple of 16, cropped back)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__(spatial_dims, in_channels, out_channels, **kwargs)
        self.spatial_dims_, self.multiple, self.bottleneck_norm = spatial_dims, 16, True


class PaddedSegResNet(PadCropMixin, SegResNet):
    """MONAI's SegResNet for any input size (padded to a multiple of 2**(len(blocks_down) - 1), cropped back)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
        self.spatial_dims_, self.multiple = spatial_dims, 2 ** (len(self.blocks_down) - 1)


class PaddedSwinUNETR(PadCropMixin, SwinUNETR):
    """MONAI's SwinUNETR for any input size (padded to a multiple of patch_size * 2**len(depths) = 32 by
    default, cropped back)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, **kwargs) -> None:
        super().__init__(in_channels, out_channels, spatial_dims=spatial_dims, **kwargs)
        self.spatial_dims_ = spatial_dims
        self.multiple = kwargs.get("patch_size", 2) * 2 ** len(kwargs.get("depths", (2, 2, 2, 2)))
        self.bottleneck_norm = True


def _check_dims(spatial_dims: int) -> int:
    if check_spatial_dims(spatial_dims) not in (2, 3):
        raise ValueError(f"this baseline supports spatial_dims 2 and 3, got {spatial_dims}")
    return spatial_dims


@register_model("segmentation", spatial_dims=(2, 3), input_size={2: (32, 32), 3: (16, 16, 16)})
def unet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
         features: Sequence[int] = UNET_FEATURES, **kwargs) -> nn.Module:
    """MONAI BasicUNet (no Mamba): the plain U-Net baseline; features=UNET_0_5M for the 0.5M DRIVE anchor."""
    return PaddedBasicUNet(_check_dims(spatial_dims), in_channels, out_channels, features=tuple(features), **kwargs)


@register_model("segmentation", spatial_dims=(2, 3), input_size={2: (32, 32), 3: (16, 16, 16)})
def segresnet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, init_filters: int = 8,
              **kwargs) -> nn.Module:
    """MONAI SegResNet (Myronenko 2018, no Mamba): the residual conv encoder-decoder baseline."""
    return PaddedSegResNet(_check_dims(spatial_dims), in_channels, out_channels, init_filters=init_filters, **kwargs)


@register_model("segmentation", spatial_dims=(2, 3), input_size={2: (32, 32), 3: (16, 16, 16)})
def swin_unetr(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, feature_size: int = 24,
               **kwargs) -> nn.Module:
    """MONAI SwinUNETR (Hatamizadeh et al. 2022, no Mamba): the shifted-window transformer U-Net baseline."""
    return PaddedSwinUNETR(_check_dims(spatial_dims), in_channels, out_channels, feature_size=feature_size, **kwargs)


class ResidualBasicUNet(PaddedBasicUNet):
    """MONAI's BasicUNet predicting a residual: (batch, C, *spatial) -> x + unet(x), (batch, C, *spatial)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, C, *spatial) -> (batch, C, *spatial)."""
        return x + super().forward(x)


@register_model("restoration", spatial_dims=(2, 3), input_size={2: (32, 32), 3: (16, 16, 16)})
def residual_unet(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1,
                  features: Sequence[int] = UNET_FEATURES, **kwargs) -> nn.Module:
    """MONAI BasicUNet with a residual output, x + unet(x) (no Mamba): the restoration U-Net baseline."""
    check_same_channels(in_channels, out_channels)
    return ResidualBasicUNet(_check_dims(spatial_dims), in_channels, out_channels, features=tuple(features), **kwargs)


# --- classification ----------------------------------------------------------------------------------------------


@register_model("classification", spatial_dims=(1, 2, 3), input_size={1: (256,), 2: (28, 28), 3: (28, 28, 28)})
def resnet18(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, small_input: bool = True,
             **kwargs) -> nn.Module:
    """MONAI ResNet-18 (He et al. 2016, no Mamba), 1D/2D/3D; small_input: MedMNIST v2's "ResNet-18 (28)" stem."""
    from monai.networks.nets import ResNet

    # MedMNIST v2 (Yang et al. 2023) keeps 28x28 inputs' resolution: conv1 3x3 stride 1 and no max pool;
    # small_input=False is the ImageNet stem (7x7 stride 2 and a 3x3 max pool) for 224-size inputs.
    stem = dict(conv1_t_size=3, conv1_t_stride=1, no_max_pool=True) if small_input else dict(
        conv1_t_size=7, conv1_t_stride=2, no_max_pool=False)
    return ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=check_spatial_dims(spatial_dims),
                  n_input_channels=in_channels, num_classes=out_channels, **{**stem, **kwargs})
