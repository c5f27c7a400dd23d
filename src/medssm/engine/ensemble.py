"""Ensembles of checkpoints: the mean of their probabilities, as nnU-Net ensembles the models of its folds.

``medssm evaluate`` and ``medssm predict`` take several ``--checkpoint`` values, or a cross-validation folder
(every ``fold_<i>/`` best checkpoint). Each member runs the same inference (:func:`medssm.engine.inference.infer`
with one set of settings: sliding window, overlap, flip TTA) and the ensemble returns the mean of the members'
softmax (segmentation, classification) or sigmoid (multi-label) probabilities; for restoration the mean of the
restored images. Sliding-window blending and TTA are linear in the probabilities, so this equals one model
whose probabilities are the members' mean.

A cross-validation's folds were each trained on the other folds' test cases: an ensemble of the folds is for
new data (another folder, an external test set). Scoring it on a fold's test split counts cases most members
trained on, and :func:`warn_fold_leakage` says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import load_model
from .config import Config
from .folds import fold_dirs, is_cv_folder
from .inference import infer
from .setup import resolve_run_checkpoint

logger = logging.getLogger(__name__)

CheckpointPaths = str | Path | Sequence[str | Path]


def resolve_checkpoints(paths: CheckpointPaths) -> list[Path]:
    """The checkpoint folders ``paths`` name: a cross-validation folder gives every fold's best checkpoint, a
    run folder its best checkpoint, a checkpoint folder itself. FileNotFoundError/ValueError name the path."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("no checkpoint given")
    resolved: list[Path] = []
    for path in map(Path, paths):
        if is_cv_folder(path):
            folds = fold_dirs(path)
            unfinished = [f.name for f in folds if not (f / "checkpoints" / "best").exists()]
            if not folds or unfinished:
                raise ValueError(f"{path}: cross-validation folder with folds {unfinished or 'none'} not trained; "
                                 "finish them with medssm cv (same command) or name checkpoints one by one")
            resolved += [f / "checkpoints" / "best" for f in folds]
        else:
            resolved.append(resolve_run_checkpoint(path))
    return resolved


# What members must share: their inputs and outputs mean the same thing (the key in meta, how to say it).
_SHARED = (("task", "task"), ("num_classes", "number of classes"))
_SHARED_ARGS = (("spatial_dims", "spatial dims"), ("in_channels", "input channels"), ("out_channels", "outputs"))


class EnsemblePredictor:
    """Averages the probabilities of several models (one model: exactly its own output).

    Args:
        models: the members (in eval mode, on the device the images will be on).
        metas: their checkpoint metadata (``checkpoint.json``), in the same order.
        names: the members' checkpoint paths, for reports.

    Raises ValueError when the members differ in task, classes, spatial dims, input channels, outputs or
    intensity normalisation (``transforms.modality``), naming the two checkpoints that differ.
    """

    def __init__(self, models: Sequence[nn.Module], metas: Sequence[dict[str, Any]],
                 names: Sequence[str | Path] | None = None) -> None:
        if not models or len(models) != len(metas):
            raise ValueError(f"need one meta per model and at least one model, got {len(models)} and {len(metas)}")
        self.models, self.metas = list(models), list(metas)
        self.names = [str(n) for n in names] if names is not None else [f"model {i}" for i in range(len(models))]
        _check_compatible(self.metas, self.names)

    @classmethod
    def load(cls, checkpoints: CheckpointPaths, device: str | torch.device = "cpu") -> EnsemblePredictor:
        """Load every checkpoint ``checkpoints`` names (see :func:`resolve_checkpoints`) onto ``device``."""
        paths = resolve_checkpoints(checkpoints)
        loaded = [load_model(path, device) for path in paths]
        if len(paths) > 1:
            logger.info("ensemble of %d checkpoints: %s", len(paths), ", ".join(map(str, paths)))
        return cls([m for m, _ in loaded], [meta for _, meta in loaded], paths)

    @property
    def meta(self) -> dict[str, Any]:
        """The first member's metadata: its config gives the data and inference settings of the ensemble."""
        return self.metas[0]

    @property
    def name(self) -> str:
        """The checkpoint, or "ensemble of N: a, b, ..." for several."""
        if len(self.names) == 1:
            return self.names[0]
        return f"ensemble of {len(self.names)}: " + ", ".join(self.names)

    def __len__(self) -> int:
        return len(self.models)

    def __call__(self, image: torch.Tensor, task: str, **infer_args: Any) -> torch.Tensor:
        """The members' mean of :func:`medssm.engine.inference.infer` ``(model, image, task, **infer_args)``:
        (B, K, *spatial) or (B, K) probabilities, or the restored image (B, C, *spatial)."""
        if len(self.models) == 1:
            return infer(self.models[0], image, task, **infer_args)
        total = None
        for model in self.models:
            output = infer(model, image, task, **infer_args).float()
            total = output if total is None else total + output
        return total / len(self.models)


def _check_compatible(metas: Sequence[dict[str, Any]], names: Sequence[str]) -> None:
    first = metas[0]
    for meta, name in zip(metas[1:], names[1:], strict=True):
        pairs = [(first.get(key), meta.get(key), what) for key, what in _SHARED]
        pairs += [(first["model_args"].get(key), meta["model_args"].get(key), what) for key, what in _SHARED_ARGS]
        pairs.append((_modality(first), _modality(meta), "intensity normalisation (transforms.modality)"))
        for mine, theirs, what in pairs:
            if mine != theirs:
                raise ValueError(f"cannot ensemble {names[0]} and {name}: their {what} differ ({mine!r} vs "
                                 f"{theirs!r}); an ensemble averages models of one task, classes and inputs")


def _modality(meta: dict[str, Any]) -> Any:
    return meta.get("config", {}).get("transforms", {}).get("modality")


def warn_fold_leakage(metas: Sequence[dict[str, Any]], config: Config, split: str) -> bool:
    """Warn (and return True) when members trained on different folds are scored on a fold split: each
    member but one trained on some of those cases, so the score is optimistic."""
    folds = {meta.get("config", {}).get("data", {}).get("args", {}).get("fold") for meta in metas}
    if len(metas) < 2 or len(folds) < 2 or config.data.args.get("num_folds") is None:
        return False
    logger.warning("the %d ensemble members were trained on different cross-validation folds (%s) and are scored "
                   "on the %r split of fold %s: most members trained on those cases, so the score is optimistic. "
                   "An ensemble of folds is for new data: evaluate it on another folder or split (override "
                   "data.args, e.g. data.args.root=... data.args.num_folds=null).", len(metas),
                   sorted(folds, key=str), split, config.data.args.get("fold"))
    return True
