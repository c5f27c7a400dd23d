"""DnCNN (Zhang et al. 2017, "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for Image Denoising",
IEEE TIP 26(7), arXiv:1608.03981), for spatial_dims 1, 2 or 3 and any input size.

(batch, C, *spatial) -> (batch, C, *spatial), the restored image ``x - net(x)``: the network predicts the
noise (residual learning) through ``depth`` 3x3(x3) convolutions of ``features`` channels, the first followed
by ReLU, the middle ones by batch norm and ReLU, the last mapping back to C channels. The paper's sizes:
depth 17 (DnCNN-S, known noise level) or 20 (DnCNN-B, blind), 64 features: 556k parameters at C = 1,
depth 17. Padding keeps the size, so any input size works.

Differences from the paper's MatConvNet code: PyTorch's default initialisation (the paper: MSRA) and batch
norm settings; the middle convolutions have no bias (the batch norm that follows makes it redundant).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..conventions import check_spatial_dims
from ..layers.factories import conv_nd, norm_nd
from ..layers.grid import check_grid
from ..layers.restoration import check_same_channels
from .registry import register_model


class DnCNN(nn.Module):
    """DnCNN: (batch, in_channels, *spatial) -> (batch, in_channels, *spatial) = x - noise estimate.

    Args:
        spatial_dims: 1, 2 or 3. in_channels: image channels (also the output's).
        depth: convolution layers in all (>= 2; the paper's 17). features: channels of the hidden layers (64).
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, depth: int = 17, features: int = 64) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 2:
            raise ValueError(f"depth must be an integer >= 2 (first and last conv), got {depth!r}")
        if features < 1:
            raise ValueError(f"features must be positive, got {features}")
        self.spatial_dims, self.in_channels = check_spatial_dims(spatial_dims), in_channels
        layers: list[nn.Module] = [conv_nd(spatial_dims, in_channels, features, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [conv_nd(spatial_dims, features, features, 3, padding=1, bias=False),
                       norm_nd("batch", spatial_dims, features), nn.ReLU(inplace=True)]
        layers.append(conv_nd(spatial_dims, features, in_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (batch, in_channels, *spatial) -> (batch, in_channels, *spatial)."""
        check_grid(x, self.spatial_dims, self.in_channels)
        return x - self.body(x)


@register_model("restoration", spatial_dims=(1, 2, 3), input_size={1: (64,), 2: (24, 24), 3: (8, 8, 8)})
def dncnn(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 1, **kwargs) -> nn.Module:
    """DnCNN (Zhang et al. 2017): 17 conv-BN-ReLU layers of 64 features predicting the noise (no Mamba)."""
    check_same_channels(in_channels, out_channels)
    return DnCNN(spatial_dims, in_channels, **kwargs)
