"""Class imbalance: class-weighted losses (``train.class_weights``) and a class-balanced batch sampler
(``train.sampler: balanced``).

Class weights are computed once, from the labels of the TRAINING split, and saved in the run folder as
``class_weights.json``; a resumed run reads them from there, so it continues with exactly the weights it
started with. What they weigh depends on the task:

- classification: the cross-entropy's per-class ``weight``. ``auto`` gives each class the inverse of its
  frequency in the training split, normalised so that the weights of the classes present average 1 (a
  class absent from the training split gets 0: no target ever selects it).
- segmentation: the cross-entropy part of ``dice_ce`` (and ``ce``); the Dice part is left unweighted. Only a
  given list: ``auto`` would have to read every training mask to count voxels.
- multilabel: ``BCEWithLogitsLoss``'s ``pos_weight`` per label. ``auto`` gives each label its count of
  negatives over positives in the training split (1 for a label without positives), the usual choice for
  ``pos_weight``; a list is used as given.

The balanced sampler (classification only) draws each epoch's samples with replacement, each with
probability proportional to 1 / (its class's count in the training split), so every class is drawn equally
often on average; the draw is seeded by (seed, epoch) like the plain sampler's permutation, so a resumed run
replays the same batches, and an epoch has as many batches as with the plain sampler.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from .config import SAMPLERS
from .distributed import DistInfo, ShardedBatchSampler
from .files import write_text_atomic

logger = logging.getLogger(__name__)

WEIGHTED_TASKS = ("classification", "segmentation", "multilabel")
WEIGHTS_FILE = "class_weights.json"


def train_labels(dataset: Dataset, task: str) -> torch.Tensor:
    """The training split's labels without reading its images: (N,) class indices (classification) or
    (N, K) 0/1 rows (multilabel), from the data set's ``labels`` attribute, else from each item's "label"."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        logger.info("the training split has no labels attribute: reading its %d items for the labels", len(dataset))
        labels = torch.stack([torch.as_tensor(dataset[i]["label"]) for i in range(len(dataset))])
    labels = torch.as_tensor(labels)
    if task == "classification":
        return labels.reshape(len(labels), -1)[:, 0].long()
    return labels.reshape(len(labels), -1).float()


def auto_class_weights(labels: torch.Tensor, task: str, num_classes: int) -> tuple[list[float], list[int]]:
    """(weights, counts) for ``class_weights: auto`` (see the module docstring): inverse class frequency
    normalised to mean 1 over the classes present (classification), negatives / positives (multilabel)."""
    if task == "classification":
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"training labels {sorted(set(labels.tolist()))} fall outside 0..{num_classes - 1}")
        counts = torch.bincount(labels, minlength=num_classes).double()
        present = counts > 0
        weights = torch.zeros(num_classes, dtype=torch.float64)
        weights[present] = 1.0 / counts[present]
        weights[present] /= weights[present].mean()
        return weights.tolist(), counts.long().tolist()
    if task == "multilabel":
        positives = labels.sum(0).double()
        negatives = len(labels) - positives
        weights = torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives))
        return weights.tolist(), positives.long().tolist()
    raise ValueError(f"train.class_weights: auto is computed for classification and multilabel training labels, "
                     f"not for {task} (counting the voxels of every training mask): give one weight per class, "
                     "e.g. train.class_weights=[0.2,1.0]")


def resolve_class_weights(spec: str | list[float] | None, dataset: Dataset, task: str, num_classes: int,
                          out_dir: Path, resume: bool, info: DistInfo) -> list[float] | None:
    """The loss weights of a run (None without ``train.class_weights``), logged and saved in
    ``out_dir/class_weights.json``; a resumed run reuses the saved ones."""
    if spec is None:
        return None
    saved = out_dir / WEIGHTS_FILE
    if resume and saved.is_file():
        return json.loads(saved.read_text())["weights"]
    if task not in WEIGHTED_TASKS:
        raise ValueError(f"train.class_weights applies to {WEIGHTED_TASKS} tasks, not to {task}")
    counts = None
    if spec == "auto":
        weights, counts = auto_class_weights(train_labels(dataset, task), task, num_classes)
    else:
        weights = [float(w) for w in spec]
        if len(weights) != num_classes:
            raise ValueError(f"train.class_weights has {len(weights)} values but the model has {num_classes} "
                             f"{'labels' if task == 'multilabel' else 'classes'}; give one per class")
    applied = "BCE pos_weight" if task == "multilabel" else "cross-entropy weight"
    logger.info("train.class_weights=%s: %s %s (training counts %s)", spec if spec == "auto" else "given",
                   applied, [round(w, 4) for w in weights], counts)
    if info.is_main:
        record = {"class_weights": spec, "task": task, "applied_as": applied, "weights": weights,
                  "train_counts": counts}
        write_text_atomic(saved, json.dumps(record, indent=2) + "\n")
    return weights


class BalancedBatchSampler(ShardedBatchSampler):
    """:class:`ShardedBatchSampler` whose per-epoch order is a (seed, epoch)-seeded draw with replacement
    that picks every class equally often on average (``WeightedRandomSampler`` with weights
    1 / class count); ``labels`` (N,) are the training split's class indices."""

    def __init__(self, labels: torch.Tensor, batch_size: int, info: DistInfo, seed: int) -> None:
        super().__init__(len(labels), batch_size, info, seed)
        counts = torch.bincount(labels).double()
        self.weights = 1.0 / counts[labels]

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = list(WeightedRandomSampler(self.weights, self.num_samples, replacement=True, generator=generator))
        for b in range(self.start_batch, self.batches_per_epoch()):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield batch[self.info.rank::self.info.world_size]


def make_train_sampler(name: str, dataset: Dataset, task: str, batch_size: int, info: DistInfo,
                       seed: int) -> ShardedBatchSampler:
    """The training batch sampler ``train.sampler`` names: ``shuffle`` (a seeded permutation per epoch) or
    ``balanced`` (classification only)."""
    if name == "shuffle":
        return ShardedBatchSampler(len(dataset), batch_size, info, seed)
    if name != "balanced":
        raise ValueError(f"train.sampler must be one of {SAMPLERS}, got {name!r}")
    if task != "classification":
        raise ValueError(f"train.sampler: balanced draws classes equally for classification, not for {task}")
    return BalancedBatchSampler(train_labels(dataset, task), batch_size, info, seed)

