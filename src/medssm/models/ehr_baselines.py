"""Baselines on the same event tokens as ``ehr_mamba``: a GRU and a Transformer encoder (the recurrent and
attention models that EHRMamba is compared with: Fallahpour et al. 2024, arXiv 2405.14567, compare with
CEHR-BERT / BigBird transformers; GRU-based models such as GRU-D are the usual ICU-mortality baselines).

Both share :class:`~medssm.models.ehr_mamba.EventSequenceModel`'s embedding, pooling and heads, so that a
comparison changes only the sequence mixer:

- ``ehr_gru``: a ``depth``-layer GRU (causal), pooled by the mean over the real tokens by default (as
  ``ehr_mamba``; ``pooling="last"`` reads its final state).
- ``ehr_transformer``: sinusoidal positions added to the embeddings, then a pre-norm TransformerEncoder
  (GELU, 4x feed-forward) with a key-padding mask (and a causal mask with ``causal=True``), pooled by the
  mean over the real tokens by default (as the others). Attention memory grows as L^2 (``medssm bench ehr``
  measures it).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..layers.events import packed_event_input
from .ehr_mamba import PHYSIONET2012_VOCAB, EventSequenceModel
from .registry import register_model


class EHRGRU(EventSequenceModel):
    """GRU over event tokens: (batch, L, 4) -> logits (batch, out_channels). ``depth`` GRU layers of width
    d_model, dropout between them; other arguments as :class:`~medssm.models.ehr_mamba.EHRMamba`."""

    def __init__(self, in_channels: int = PHYSIONET2012_VOCAB, out_channels: int = 2, d_model: int = 128,
                 depth: int = 2, time_dim: int = 32, use_values: bool = False, pooling: str = "mean",
                 dropout: float = 0.1, tasks: dict[str, int] | None = None) -> None:
        super().__init__(in_channels, out_channels, d_model, time_dim, use_values, pooling, dropout, tasks)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.gru = nn.GRU(d_model, d_model, num_layers=depth, batch_first=True, dropout=dropout if depth > 1 else 0.0)

    def backbone(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]  # causal: a real token's state never sees the padding after it


def sinusoidal_positions(length: int, d_model: int, device: torch.device) -> torch.Tensor:
    """(length, d_model) sine/cosine position encodings (Vaswani et al. 2017), any length."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(1e4) / d_model))
    out = torch.zeros(length, d_model, device=device)
    out[:, 0::2] = torch.sin(position * frequency)
    out[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return out


class EHRTransformer(EventSequenceModel):
    """Transformer encoder over event tokens: (batch, L, 4) -> logits (batch, out_channels).

    Args (beyond :class:`EHRGRU`'s): heads: attention heads. causal: also mask attention to later tokens.
    """

    def __init__(self, in_channels: int = PHYSIONET2012_VOCAB, out_channels: int = 2, d_model: int = 128,
                 depth: int = 4, heads: int = 4, time_dim: int = 32, use_values: bool = False,
                 pooling: str = "mean", dropout: float = 0.1, causal: bool = False,
                 tasks: dict[str, int] | None = None) -> None:
        super().__init__(in_channels, out_channels, d_model, time_dim, use_values, pooling, dropout, tasks)
        if depth < 1 or d_model % heads:
            raise ValueError(f"need depth >= 1 and d_model divisible by heads, got depth {depth}, d_model {d_model}, "
                             f"heads {heads}")
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.causal = causal

    def backbone(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        x = x + sinusoidal_positions(length, x.shape[2], x.device) * mask[..., None]
        causal = None
        if self.causal:  # True = may not attend (a bool mask, like the padding mask)
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        return self.encoder(x, mask=causal, src_key_padding_mask=~mask, is_causal=self.causal)


_INPUT = {None: (256,)}


@register_model("events", spatial_dims=(), input_size=_INPUT, example_input=packed_event_input)
def ehr_gru(in_channels: int = PHYSIONET2012_VOCAB, out_channels: int = 2, **kwargs) -> nn.Module:
    """GRU over EHRMamba's event tokens (same embedding, pooling and head)."""
    return EHRGRU(in_channels, out_channels, **kwargs)


@register_model("events", spatial_dims=(), input_size=_INPUT, example_input=packed_event_input)
def ehr_transformer(in_channels: int = PHYSIONET2012_VOCAB, out_channels: int = 2, **kwargs) -> nn.Module:
    """Transformer encoder over EHRMamba's event tokens (same embedding and head, mean pooling)."""
    return EHRTransformer(in_channels, out_channels, **kwargs)
