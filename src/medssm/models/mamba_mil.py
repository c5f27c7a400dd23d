"""MambaMIL (Yang, Wang & Chen 2024, "MambaMIL: Enhancing Long Sequence Modeling with Sequence Reordering in
Computational Pathology", MICCAI 2024, arXiv:2403.06800): a bag read as a sequence by SR-Mamba layers (one
branch in bag order, one reordered with a stride), then attention pooling and a linear head.

As the released code (isyangshu/MambaMIL, ``models/MambaMIL.py``): Linear(d, 512) + ReLU + dropout; per layer
``h = h + SRMamba(LayerNorm(h))``; a final LayerNorm; attention pooling (Linear 128, tanh, Linear 1,
softmax); Linear head. Differences: the released code re-initialises every Linear inside the Mamba layers with
xavier-normal weights and zero biases (dt_proj's bias too, which sets dt to softplus(0)); here only the Linear
layers outside the mixers get that init, and the mixers keep Mamba's dt initialisation. ``checkpoint=True``
(not in the released code) recomputes each layer's activations in the backward instead of keeping them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint as recompute

from ..layers.mil import AttentionPool, InstanceProjection, build_encoder, encode_bag, resolve_sizes, xavier_init
from ..layers.sr_mamba import SRMamba
from .registry import register_model


class MambaMIL(nn.Module):
    """MambaMIL: bag (batch, n, in_channels) features, or (batch, n, in_channels, p, p) patches with an
    ``encoder`` -> (batch, out_channels) logits, for any n >= 1.

    Args:
        in_channels, out_channels, encoder, patch_size, dropout: as :class:`~medssm.models.abmil.ABMIL`.
        dim: the model width (512). depth: SR-Mamba layers (2). rate: the reordering stride (10).
        d_state, d_conv, expand: the mixers' (16, 4, 2).
        ssm: False removes the selective scan from every mixer (the gated-CNN control).
        scan_backend: selective_scan backend.
        checkpoint: activation checkpointing per SR-Mamba layer (torch.utils.checkpoint, non-reentrant): the
            backward recomputes ``mixer(norm(h))`` one layer at a time, so that training keeps only each
            layer's input (dim floats per instance) instead of its activations (about 50 KB per instance at
            the defaults), for about one more forward pass of the layers. Same logits and gradients.
            Bags of ~100k instances: docs/benchmarks.md, "mamba_mil on 100k instances" (memory per
            instance, and why such a bag needs ``MEDSSM_MALLOC=default`` under the ``medssm`` command).
    """

    def __init__(self, in_channels: int = 512, out_channels: int = 2, encoder: str | None = None,
                 patch_size: int = 27, dim: int = 512, depth: int = 2, rate: int = 10, d_state: int = 16,
                 d_conv: int = 4, expand: float = 2, dropout: float = 0.25, ssm: bool = True,
                 scan_backend: str = "auto", checkpoint: bool = False) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.in_channels = in_channels
        self.encoder, width = build_encoder(encoder, in_channels, patch_size)
        self.project = InstanceProjection(width, dim, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.mixers = nn.ModuleList(SRMamba(dim, rate=rate, d_state=d_state, d_conv=d_conv, expand=expand,
                                            ssm=ssm, scan_backend=scan_backend) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pool = AttentionPool(dim, 128)
        self.head = nn.Linear(dim, out_channels)
        xavier_init(self.project, self.pool, self.head)

    def forward(self, x: torch.Tensor, return_instance_scores: bool = False):
        """x: a bag -> logits (batch, out_channels); with ``return_instance_scores`` also the attention
        weights (batch, n) of the pooling, summing to one over each bag."""
        h = self.project(encode_bag(x, self.encoder, self.in_channels))
        for norm, mixer in zip(self.norms, self.mixers, strict=True):
            if self.checkpoint and torch.is_grad_enabled():
                h = h + recompute(_mix, norm, mixer, h, use_reentrant=False)
            else:
                h = h + _mix(norm, mixer, h)
        z, a = self.pool(self.norm(h))
        logits = self.head(z)
        return (logits, a) if return_instance_scores else logits


def _mix(norm: nn.Module, mixer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """One layer's residual branch, mixer(norm(h)): the unit that ``checkpoint=True`` recomputes."""
    return mixer(norm(h))


@register_model("mil", spatial_dims=(), input_size={None: (64,)})
def mamba_mil(in_channels: int = 512, out_channels: int = 2, encoder: str | None = None, rate: int = 10,
              ssm: bool = True, in_features: int | None = None, num_classes: int | None = None,
              **kwargs) -> MambaMIL:
    """MambaMIL (Yang et al. 2024): two SR-Mamba layers over the bag, attention pooling, linear head."""
    in_channels, out_channels = resolve_sizes(in_channels, out_channels, in_features, num_classes)
    return MambaMIL(in_channels, out_channels, encoder=encoder, rate=rate, ssm=ssm, **kwargs)
