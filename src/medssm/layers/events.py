"""Blocks for sequences of coded clinical events (EHR): the EHRMamba-style token embedding, pooling over the
real tokens, and the classification head, shared by the event models (``ehr_mamba``, ``ehr_gru``,
``ehr_transformer``).

Input layout (``medssm.data.ehr.tokens``): packed float tokens (batch, L, 4) with columns (code, type, hours
since admission, standardised value); code 0 is padding, and padding comes only after a sample's real
tokens (right padding), so the mask of real tokens is a prefix of each row.

Embedding (Fallahpour et al. 2024, EHRMamba, arXiv 2405.14567; odyssey's ``MambaEmbeddingsForCEHR``):
the code embedding is concatenated with a time embedding sin(hours * w + phi) (odyssey's
``TimeEmbeddingLayer``), projected back to d_model through tanh, the token-type embedding is added, then
LayerNorm and dropout. Differences from odyssey: no age, visit-order, visit-segment or learned position
embeddings (one ICU stay is one visit, age is a descriptor token, and a recurrent model knows token order;
the transformer adds its own sinusoidal positions), an optional value embedding (``use_values``), and padded
positions are zeroed after the embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

NUM_FEATURES = 4  # code, type, hours, value
POOLING = ("last", "mean")


def check_events(tokens: torch.Tensor) -> torch.Tensor:
    """Raise ValueError unless ``tokens`` is packed (batch, L, 4) with right padding; returns the mask
    (batch, L) bool of real tokens."""
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[-1] != NUM_FEATURES:
        raise ValueError(f"events must be packed tokens (batch, L, {NUM_FEATURES}) = (code, type, hours, value), "
                         f"got {tuple(getattr(tokens, 'shape', ()))}")
    mask = tokens[..., 0] != 0
    if tokens.shape[1] > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("events must be padded at the end (code 0 only after a sample's real tokens)")
    return mask


def trim_padding(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the trailing positions that are padding in every sample (exact for right padding): returns the
    trimmed tokens and their mask. Keeps at least one position."""
    mask = check_events(tokens)
    length = max(1, int(mask.sum(1).max())) if mask.numel() else 1
    return tokens[:, :length], mask[:, :length]


class EventEmbedding(nn.Module):
    """Packed tokens (batch, L, 4) -> embeddings (batch, L, d_model), zero at padded positions.

    Args:
        vocab_size: number of codes (code 0 = padding). d_model: width. num_types: token types (0 = padding).
        time_dim: width of the sinusoidal time embedding. use_values: add a linear embedding of the value
            column. dropout: after the LayerNorm.
    """

    def __init__(self, vocab_size: int, d_model: int, num_types: int = 4, time_dim: int = 32,
                 use_values: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        if vocab_size < 2 or d_model < 1 or num_types < 2 or time_dim < 1:
            raise ValueError(f"need vocab_size >= 2, d_model >= 1, num_types >= 2, time_dim >= 1; got "
                             f"{vocab_size}, {d_model}, {num_types}, {time_dim}")
        self.vocab_size, self.num_types = vocab_size, num_types
        self.code = nn.Embedding(vocab_size, d_model, padding_idx=0)
        self.token_type = nn.Embedding(num_types, d_model, padding_idx=0)
        self.time_w = nn.Parameter(torch.empty(time_dim))
        self.time_phi = nn.Parameter(torch.empty(time_dim))
        bound = math.sqrt(6 / (1 + time_dim))  # odyssey's xavier_uniform_ on (1, time_dim)
        nn.init.uniform_(self.time_w, -bound, bound)
        nn.init.uniform_(self.time_phi, -bound, bound)
        self.project = nn.Linear(d_model + time_dim, d_model)
        self.value = nn.Linear(1, d_model) if use_values else None
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens: (batch, L, 4) -> (batch, L, d_model)."""
        mask = check_events(tokens) if mask is None else mask
        codes, types = tokens[..., 0].long(), tokens[..., 1].long()
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise ValueError(f"event codes must lie in [0, {self.vocab_size}), got [{codes.min()}, {codes.max()}]")
        if types.numel() and (types.min() < 0 or types.max() >= self.num_types):
            raise ValueError(f"token types must lie in [0, {self.num_types}), got [{types.min()}, {types.max()}]")
        time = torch.sin(tokens[..., 2:3] * self.time_w + self.time_phi)
        x = torch.tanh(self.project(torch.cat([self.code(codes), time], dim=-1))) + self.token_type(types)
        if self.value is not None:
            x = x + self.value(tokens[..., 3:4])
        return self.dropout(self.norm(x)) * mask[..., None]


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """(batch, L, d) -> (batch, d): the last real token's state ("last", EHRMamba's pooling) or the mean over
    the real tokens ("mean")."""
    if mode == "last":
        last = (mask.sum(1) - 1).clamp_min(0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "mean":
        weight = mask[..., None].to(hidden.dtype)
        return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    raise ValueError(f"pooling must be one of {POOLING}, got {mode!r}")


class ClassificationHead(nn.Module):
    """EHRMamba's sequence-classification head: dropout -> Linear(d, d) -> act -> dropout -> Linear(d, out)
    (odyssey's ``MambaClassificationHead``; act is SiLU, the Mamba config's hidden_act)."""

    def __init__(self, d_model: int, out_channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(d_model, d_model)
        self.act = nn.SiLU()
        self.out_proj = nn.Linear(d_model, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_model) -> (batch, out_channels)."""
        return self.out_proj(self.dropout(self.act(self.dense(self.dropout(x)))))


def packed_event_input(batch: int, in_channels: int, size: tuple[int, ...]) -> torch.Tensor:
    """Example packed events (batch, size[0], 4): codes in [1, in_channels), types 1-3, sorted hours in
    [0, 48), standard normal values; every second sample padded in its last quarter."""
    length = size[0]
    tokens = torch.zeros(batch, length, NUM_FEATURES)
    tokens[..., 0] = torch.randint(1, max(2, in_channels), (batch, length)).clamp_max(max(1, in_channels - 1))
    tokens[..., 1] = torch.randint(1, 4, (batch, length))
    tokens[..., 2] = torch.sort(torch.rand(batch, length) * 48, dim=1).values
    tokens[..., 3] = torch.randn(batch, length)
    if length > 1:
        tokens[1::2, length - max(1, length // 4):] = 0
    return tokens
