"""Attention-based deep MIL (Ilse, Tomczak & Welling 2018, "Attention-based Deep Multiple Instance Learning",
ICML 2018, arXiv:1802.04712): instance embeddings, attention (or gated attention) pooling, a linear head.

Where this differs from the released code (AMLab-Amsterdam/AttentionDeepMIL) and the paper: the head gives
``out_channels`` logits for a softmax cross-entropy instead of one sigmoid output (the same model for two
classes, and it extends to more); the Linear layers get CLAM's xavier-normal initialisation.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers.mil import AttentionPool, InstanceProjection, build_encoder, encode_bag, resolve_sizes, xavier_init
from .registry import register_model


class ABMIL(nn.Module):
    """Attention MIL: bag (batch, n, in_channels) features, or (batch, n, in_channels, p, p) patches with an
    ``encoder`` -> (batch, out_channels) logits, for any n >= 1.

    h = InstanceProjection(encoder(x)) (batch, n, dim); z, a = AttentionPool(h); logits = Linear(z).

    Args:
        in_channels: feature width d (feature bags) or patch channels (with an encoder).
        out_channels: classes.
        encoder: None (feature bags) or "colon_cnn" (Ilse's conv net on 27x27 patches, trained end to end).
        patch_size: the patch side an encoder expects.
        dim: instance embedding width (Ilse's L = 500 on MNIST bags, 512 on the histology sets).
        attention_dim: the attention network's hidden width (Ilse's D = 128).
        gated: gated attention (eq. 9) instead of attention (eq. 8).
        dropout: after the input projection.
    """

    def __init__(self, in_channels: int = 512, out_channels: int = 2, encoder: str | None = None,
                 patch_size: int = 27, dim: int = 512, attention_dim: int = 128, gated: bool = False,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.encoder, width = build_encoder(encoder, in_channels, patch_size)
        self.project = InstanceProjection(width, dim, dropout)
        self.pool = AttentionPool(dim, attention_dim, gated)
        self.head = nn.Linear(dim, out_channels)
        xavier_init(self.project, self.pool, self.head)

    def forward(self, x: torch.Tensor, return_instance_scores: bool = False):
        """x: a bag (see the class docstring) -> logits (batch, out_channels); with ``return_instance_scores``
        also the attention weights (batch, n), summing to one over each bag."""
        h = self.project(encode_bag(x, self.encoder, self.in_channels))
        z, a = self.pool(h)
        logits = self.head(z)
        return (logits, a) if return_instance_scores else logits


@register_model("mil", spatial_dims=(), input_size={None: (64,)})
def abmil(in_channels: int = 512, out_channels: int = 2, encoder: str | None = None, gated: bool = False,
          in_features: int | None = None, num_classes: int | None = None, **kwargs) -> ABMIL:
    """Attention MIL (Ilse et al. 2018): attention or gated-attention pooling of a bag, linear head."""
    in_channels, out_channels = resolve_sizes(in_channels, out_channels, in_features, num_classes)
    return ABMIL(in_channels, out_channels, encoder=encoder, gated=gated, **kwargs)
