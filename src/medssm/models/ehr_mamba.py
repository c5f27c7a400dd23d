"""EHRMamba (Fallahpour et al. 2024, "EHRMamba: Towards Generalizable and Scalable Foundation Models for
Electronic Health Records", arXiv 2405.14567; VectorInstitute/odyssey): a Mamba stack over a patient's coded
events, pooled by the mean over the real tokens, with one classification head per task.

Data flow: packed tokens (batch, L, 4) -> :class:`~medssm.layers.events.EventEmbedding` (code, time, type,
optional value) -> ``depth`` pre-norm residual Mamba layers (x + Mamba(LayerNorm(x)), mamba_ssm's Block) ->
final LayerNorm -> pooling (the mean over the real tokens by default; EHRMamba's last real token with
``pooling="last"``) -> heads. ``forward`` returns the main
head's logits (batch, out_channels), what inference takes; ``forward(tokens, all_heads=True)`` (or
``forward_tasks``) returns every head's output, and :func:`multitask_loss` is the loss for training them
together. The training engine trains the extra heads with the main one when ``model.args.tasks`` is set
(see :mod:`medssm.engine.multitask`).

Differences from the released code: no pretraining (odyssey pretrains with next-token prediction and then
fine-tunes; here the model is trained for the task from scratch), medssm's ``Mamba`` mixer (mamba_ssm's
parameters) in place of Hugging Face's MambaModel, LayerNorm instead of RMSNorm, and all task heads applied
to every sample (odyssey's multi-head model picks one head per sample through task tokens). Trailing
padding is trimmed per batch before the stack, which changes nothing for the real tokens of a causal model.
``ssm=False`` removes the selective scan from every layer (the gated-CNN control).

Pooling (a change from EHRMamba, which reads the last token): the default is the mean over the real
tokens, for every event model (``ehr_gru``, ``ehr_transformer`` too). Measured on PhysioNet 2012
(validation AUROC, d_model 64, depth 2, lr 1e-3): last-token pooling learnt little (0.60 -> 0.63 over 6
epochs, and the same with ``ssm=False``, whose receptive field at the last token is only ~2 * (d_conv - 1)
tokens: the selective scan was not carrying the stay's earlier events to the last token in so few steps),
mean pooling reached 0.76 in 3 epochs and 0.79 in the 6-epoch recipe (set-b test AUROC 0.788, from
0.636); the tokens themselves are informative (a logistic regression on per-stay code counts: 0.83; the
embedding mean-pooled with no sequence model: 0.79). Mean pooling also makes ``ssm=False`` a fair control:
it answers whether the scan adds to the same local features (at this size it did not: val 0.790 both).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.events import ClassificationHead, EventEmbedding, packed_event_input, pool, trim_padding
from ..layers.mamba import Mamba
from .registry import register_model

PHYSIONET2012_VOCAB = 412  # the PhysioNet 2012 tokenizer's vocabulary with 10 bins


class MambaLayer(nn.Module):
    """x + Mamba(LayerNorm(x)): (batch, L, d_model) -> (batch, L, d_model)."""

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: float, ssm: bool, scan_backend: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, ssm=ssm, scan_backend=scan_backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


class EventSequenceModel(nn.Module):
    """Embedding -> ``backbone(x, mask)`` -> pooling -> main head and task heads; the event models differ
    only in the backbone (see :class:`EHRMamba`, ``ehr_baselines``).

    Args:
        in_channels: the code vocabulary size. out_channels: classes of the main head.
        d_model, time_dim, use_values, dropout: the embedding (``EventEmbedding``) and heads.
        pooling: "last" (the last real token) or "mean" (over the real tokens).
        tasks: extra heads {name: outputs}: outputs >= 2 is a classification head (logits), 1 a regression.
    """

    def __init__(self, in_channels: int, out_channels: int, d_model: int, time_dim: int, use_values: bool,
                 pooling: str, dropout: float, tasks: dict[str, int] | None) -> None:
        super().__init__()
        pool(torch.zeros(1, 1, 1), torch.ones(1, 1, dtype=torch.bool), pooling)  # ValueError for a bad name
        self.pooling = pooling
        self.embed = EventEmbedding(in_channels, d_model, time_dim=time_dim, use_values=use_values, dropout=dropout)
        self.norm_f = nn.LayerNorm(d_model)
        self.head = ClassificationHead(d_model, out_channels, dropout)
        tasks = dict(tasks or {})
        bad = {name: size for name, size in tasks.items() if not isinstance(size, int) or size < 1 or name == "main"}
        if bad:
            raise ValueError(f"tasks must map names (not 'main') to output sizes >= 1, got {bad}")
        self.task_heads = nn.ModuleDict({name: ClassificationHead(d_model, size, dropout)
                                         for name, size in tasks.items()})

    def backbone(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(batch, L, 4) tokens -> pooled (batch, d_model)."""
        tokens, mask = trim_padding(tokens)
        hidden = self.norm_f(self.backbone(self.embed(tokens, mask), mask))
        return pool(hidden, mask, self.pooling)

    def forward(self, tokens: torch.Tensor, all_heads: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        """(batch, L, 4) -> main logits (batch, out_channels); ``all_heads``: :meth:`forward_tasks`'s dict
        (through ``forward`` so that a DistributedDataParallel wrapper sees the call)."""
        if all_heads:
            return self.forward_tasks(tokens)
        return self.head(self.features(tokens))

    def forward_tasks(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"main": (batch, out_channels) logits, name: (batch, outputs) per task head}."""
        pooled = self.features(tokens)
        return {"main": self.head(pooled), **{name: head(pooled) for name, head in self.task_heads.items()}}


class EHRMamba(EventSequenceModel):
    """EHRMamba: packed event tokens (batch, L, 4) -> logits (batch, out_channels) (module docstring).

    Args (beyond :class:`EventSequenceModel`'s): depth: Mamba layers. d_state, d_conv, expand: the mixer's.
    ssm: False removes the selective scan. scan_backend: selective_scan backend.
    Defaults are small for CPU training; odyssey's EHRMamba uses d_model 768 and 32 layers.
    """

    def __init__(self, in_channels: int = PHYSIONET2012_VOCAB, out_channels: int = 2, d_model: int = 128,
                 depth: int = 4, d_state: int = 16, d_conv: int = 4, expand: float = 2, time_dim: int = 32,
                 use_values: bool = False, pooling: str = "mean", dropout: float = 0.1,
                 tasks: dict[str, int] | None = None, ssm: bool = True, scan_backend: str = "auto") -> None:
        super().__init__(in_channels, out_channels, d_model, time_dim, use_values, pooling, dropout, tasks)
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.layers = nn.ModuleList(MambaLayer(d_model, d_state, d_conv, expand, ssm, scan_backend)
                                    for _ in range(depth))

    def backbone(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def multitask_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                   weights: dict[str, float] | None = None) -> torch.Tensor:
    """Weighted sum over the heads in ``targets`` of: cross-entropy (a head with >= 2 outputs; targets class
    indices) or mean squared error (1 output; float targets). Samples whose target is NaN (a missing
    outcome, e.g. SAPS-I -1) are left out of that head's term; a head with no sample left adds 0.

    ``outputs`` is :meth:`EventSequenceModel.forward_tasks`'s dict; ``weights`` default 1 per head.
    """
    total = None
    for name, target in targets.items():
        if name not in outputs:
            raise ValueError(f"no head {name!r} among the outputs {sorted(outputs)}")
        output = outputs[name]
        target = target.to(output.device)
        known = ~torch.isnan(target.float())
        if output.shape[1] == 1:
            term = F.mse_loss(output[known, 0], target[known].float()) if known.any() else output.sum() * 0
        else:
            term = F.cross_entropy(output[known], target[known].long()) if known.any() else output.sum() * 0
        weight = 1.0 if weights is None else float(weights.get(name, 1.0))
        total = weight * term if total is None else total + weight * term
    if total is None:
        raise ValueError("targets is empty: nothing to train")
    return total


_INPUT = {None: (256,)}


@register_model("events", spatial_dims=(), input_size=_INPUT, example_input=packed_event_input)
def ehr_mamba(in_channels: int = PHYSIONET2012_VOCAB, out_channels: int = 2, **kwargs) -> nn.Module:
    """EHRMamba (Fallahpour et al. 2024): event tokens -> Mamba layers -> mean-pooled heads."""
    return EHRMamba(in_channels, out_channels, **kwargs)


def paper_size_parameters() -> int:
    """Parameters of the paper-sized stack (d_model 768, 32 layers) on the PhysioNet vocabulary (for docs)."""
    with torch.device("meta"):
        model = EHRMamba(d_model=768, depth=32)
    return sum(math.prod(p.shape) for p in model.parameters())
