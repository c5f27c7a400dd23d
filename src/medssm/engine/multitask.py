"""Several clinical tasks at once in the training engine (issue 24; EHRMamba, Fallahpour et al. 2024, arXiv
2405.14567, fine-tunes one model on several tasks).

Switch: ``model.args.tasks: {los: 1, saps: 1, sofa: 1}`` gives an event model extra heads named after the
data set's ``target_names`` (PhysioNet 2012: death, los, saps, sofa; the columns of ``item["targets"]``);
``train.task_weights: {los: 0.5}`` weighs their loss terms (default 1 each). A training step's loss is then
the main loss (``train.loss`` on the main head's logits and ``label``, class weights included) plus
:func:`~medssm.models.ehr_mamba.multitask_loss` over the extra heads: mean squared error on standardised
targets for a 1-output head, cross-entropy on class indices otherwise, samples with a missing (NaN) target
left out of that head's term. The standardisation (mean and standard deviation of each regression target
over the known values of the training split only) is saved in the checkpoint metadata under ``multitask``
and restored from the last checkpoint on resume. The main head alone is validated and selects checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..models.ehr_mamba import multitask_loss


@dataclass
class MultiTask:
    """The extra heads' targets and weights.

    Attributes:
        columns: head name -> its column in the batch's ``targets`` (batch, n_targets).
        scales: regression head -> (mean, std) of its training-split targets; classification heads absent.
        weights: head name -> loss weight.
    """

    columns: dict[str, int]
    scales: dict[str, tuple[float, float]]
    weights: dict[str, float]

    def targets(self, table: torch.Tensor) -> dict[str, torch.Tensor]:
        """(batch, n_targets) raw targets -> {head: (batch,)} standardised for the regression heads (NaN kept)."""
        out = {}
        for name, column in self.columns.items():
            values = table[:, column].float()
            if name in self.scales:
                mean, std = self.scales[name]
                values = (values - mean) / std
            out[name] = values
        return out

    def loss(self, outputs: dict[str, torch.Tensor], table: torch.Tensor) -> torch.Tensor:
        """The weighted extra-head loss of one batch (``outputs``: the model's ``forward_tasks`` dict)."""
        return multitask_loss(outputs, self.targets(table), self.weights)

    def to_dict(self) -> dict[str, Any]:
        return {"columns": dict(self.columns), "scales": {k: list(v) for k, v in self.scales.items()},
                "weights": dict(self.weights)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiTask:
        return cls({k: int(v) for k, v in data["columns"].items()},
                   {k: (float(v[0]), float(v[1])) for k, v in data["scales"].items()},
                   {k: float(v) for k, v in data["weights"].items()})


def setup_multitask(tasks: dict[str, int] | None, weights: dict[str, float] | None, train_set: Any
                    ) -> MultiTask | None:
    """The :class:`MultiTask` of ``model.args.tasks`` and ``train.task_weights`` on ``train_set`` (None when
    there are no extra heads); ValueError for a head the data set has no target for, a weight for no head,
    or a regression target with fewer than 2 known training values."""
    tasks, weights = dict(tasks or {}), dict(weights or {})
    if not tasks:
        if weights:
            raise ValueError(f"train.task_weights {weights} given, but model.args.tasks sets no extra heads")
        return None
    names = getattr(train_set, "target_names", None)
    if names is None or not hasattr(train_set, "target_table"):
        raise ValueError(f"model.args.tasks {tasks} needs a data set whose items carry 'targets' "
                         f"(e.g. physionet2012); {type(train_set).__name__} has none")
    unknown = sorted(set(tasks) - set(names))
    if unknown:
        raise ValueError(f"model.args.tasks heads {unknown} are not targets of the data set; expected some of "
                         f"{list(names)}")
    stray = sorted(set(weights) - set(tasks))
    if stray:
        raise ValueError(f"train.task_weights names {stray}, which are not heads of model.args.tasks {sorted(tasks)}")
    table = train_set.target_table()
    columns = {name: list(names).index(name) for name in tasks}
    scales = {}
    for name, size in tasks.items():
        if size != 1:
            continue
        known = table[:, columns[name]][~torch.isnan(table[:, columns[name]])].double()
        if len(known) < 2:
            raise ValueError(f"target {name!r} has {len(known)} known values in the training split: cannot "
                             "standardise it")
        std = float(known.std())
        scales[name] = (float(known.mean()), std if std > 0 and math.isfinite(std) else 1.0)
    return MultiTask(columns, scales, {name: float(weights.get(name, 1.0)) for name in tasks})


@torch.no_grad()
def regression_errors(model: torch.nn.Module, dataset: Any, multitask: MultiTask, batch_size: int = 32,
                      device: str | torch.device = "cpu") -> dict[str, float]:
    """{"mae_<head>": mean absolute error in the target's own units} of each regression head over the
    samples of ``dataset`` whose target is known (NaN when none is); predictions are de-standardised with
    the checkpoint's ``multitask`` scales. For a report next to the main task's metrics."""
    model = model.to(device).eval()
    errors: dict[str, list[torch.Tensor]] = {name: [] for name in multitask.scales}
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        outputs = model(batch["image"].to(device), all_heads=True)
        for name, (mean, std) in multitask.scales.items():
            target = batch["targets"][:, multitask.columns[name]].double()
            predicted = outputs[name][:, 0].double().cpu() * std + mean
            known = ~torch.isnan(target)
            errors[name].append((predicted[known] - target[known]).abs())
    return {f"mae_{name}": float(torch.cat(parts).mean()) if sum(len(p) for p in parts) else math.nan
            for name, parts in errors.items()}
