"""VMamba (Liu et al. 2024, "VMamba: Visual State Space Model", arXiv:2401.10166): a hierarchical classifier
of VSS blocks (SS2D with the four-way cross scan) and patch merging, for spatial_dims 1, 2 or 3.

Structure (:class:`VMamba`)::

    x (batch, in, *S) -> PatchEmbed (patch_size, LayerNorm) -> (batch, dims[0], *S / P)
    stage i: depths[i] VSSBlocks (x + dp(SS2D(LN(x))), x + dp(MLP(LN(x)))) at dims[i] channels,
             PatchMerging (2x) between stages
    masked global average pool -> LayerNorm -> Linear -> (batch, out)

As the paper's first (v0) models, which the released code (MzeroMiko/VMamba, vmamba.py, "v0" config) keeps:
PatchEmbed with patch 4, SS2D with d_state 16, expand 2, depthwise 3x3 conv, the cross route, LayerNorm after
the scan, a final LayerNorm and a linear head; VMamba-T is ``dims=(96, 192, 384, 768), depths=(2, 2, 9, 2),
mlp_ratio=0, patch_size=4`` (the paper's 22M at 1000 classes; 22.89M here). The small default keeps v0's
blocks without MLP (``mlp_ratio=4`` gives VMamba v2's MLP branch) at widths (16, 32, 64, 96) and patch 2 (28x28
inputs). Differences: N-d (``route="cross"`` is K = 2 orders in 1D, 4 in 2D, 6 in 3D; ``route=`` takes any
route of ``medssm.scans``); the pool ignores the zero padding that makes any input size work; our
selective-scan backends instead of the CUDA kernel; default initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from ..layers import PatchEmbed, PatchMerging, VSSBlock
from .hierarchical import StagedClassifier, check_stages, drop_path_rates
from .registry import register_model


class VMamba(StagedClassifier):
    """VMamba classifier: (batch, in_channels, *spatial) -> logits (batch, out_channels), spatial_dims 1, 2 or
    3, any spatial size (see the module docstring).

    Args:
        spatial_dims, in_channels, out_channels: MONAI's meaning.
        dims, depths: channels and VSS blocks per stage (VMamba-T: (96, 192, 384, 768), (2, 2, 9, 2)).
        patch_size: the patch embedding's stride (the paper's 4).
        route: scan route of every SS2D (default "cross"). d_state, expand, d_conv: the mixers'.
        mlp_ratio: MLP hidden / dim in every block (0: none, as VMamba v0).
        drop_path_rate: stochastic depth at the last block. dropout: before the head.
        scan_backend: selective_scan backend. ssm: False removes the selective scan from every mixer.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2,
                 dims: Sequence[int] = (16, 32, 64, 96), depths: Sequence[int] = (2, 2, 4, 2), patch_size: int = 2,
                 route: str = "cross", d_state: int = 16, expand: float = 2.0, d_conv: int = 3,
                 mlp_ratio: float = 0.0, drop_path_rate: float = 0.1, dropout: float = 0.0,
                 scan_backend: str = "auto", ssm: bool = True) -> None:
        super().__init__()
        dims, depths = check_stages(dims, depths)
        rates = drop_path_rates(depths, drop_path_rate)
        stages = [nn.Sequential(*(VSSBlock(spatial_dims, dim, d_state=d_state, expand=expand, route=route,
                                           d_conv=d_conv, mlp_ratio=mlp_ratio, drop_path=p, scan_backend=scan_backend,
                                           ssm=ssm) for p in stage_rates))
                  for dim, stage_rates in zip(dims, rates, strict=True)]
        self.build(spatial_dims, in_channels, out_channels, dims,
                   PatchEmbed(spatial_dims, in_channels, dims[0], patch_size), patch_size, stages,
                   lambda i: PatchMerging(spatial_dims, dims[i], dims[i + 1]), nn.LayerNorm(dims[-1]),
                   dropout=dropout)


@register_model("classification", spatial_dims=(1, 2, 3), input_size={1: (256,), 2: (28, 28), 3: (28, 28, 28)})
def vmamba(spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, **kwargs) -> nn.Module:
    """VMamba (Liu et al. 2024): hierarchical VSS blocks (SS2D, cross scan) with patch merging."""
    return VMamba(spatial_dims, in_channels, out_channels, **kwargs)
