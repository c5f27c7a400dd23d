"""What training, evaluation and prediction set up before they run: the device, the data splits and their
loaders, the model's arguments, the loss, the run folder, the checkpoint a path names, and the versions
recorded with a checkpoint."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader, Dataset, Subset

from .. import __version__
from ..conventions import DENSE_TASKS, MODEL_TASK
from ..data import build_dataset
from ..data.mil_colon import bag_transforms
from ..data.transforms import eval_transforms, train_transforms
from ..models import get_entry
from .checkpoint import read_meta
from .config import Config, config_from_dict
from .distributed import DistInfo, shard_indices
from .tasks import SEQUENCE_TASKS, check_supported

logger = logging.getLogger(__name__)

# The loss "auto" picks for each task the training loop implements.
DEFAULT_LOSS = {"segmentation": "dice_ce", "classification": "ce", "multilabel": "bce", "restoration": "l1",
                "mil": "ce", "events": "ce"}


class SeededTransformDataset(Dataset):
    """Applies ``transform`` to ``dataset[i]`` with its random state seeded from (seed, epoch, i), so that a
    sample's augmentation does not depend on worker processes, batch order or where a run was resumed."""

    def __init__(self, dataset: Dataset, transform: Any, seed: int) -> None:
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        if self.transform is None:
            return item
        if hasattr(self.transform, "set_random_state"):
            mixed = (self.seed * 1_000_003 + self.epoch * 10_007 + index) % (2**32)
            self.transform.set_random_state(seed=mixed)
        return self.transform(item)


def pick_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``; ValueError naming the
    device for CUDA on a machine without it (or without that index) and for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {name!r}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    elif device.type != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:<index>, got {name!r}")
    return device


def build_split(config: Config, split: str, train: bool) -> tuple[Dataset, Any]:
    """The dataset of ``split`` with the preset transforms (training or evaluation)."""
    dataset = build_dataset(config.data.name, split=split, **config.data.args)
    if dataset.task in SEQUENCE_TASKS:
        return dataset, None  # token sequences: no image transforms
    t = config.transforms
    if dataset.task == "mil":  # bags: per-instance flips, rotations and colour (patch bags only)
        return dataset, bag_transforms(dataset, train, flips=t.flips, rotations=t.rotations)
    patch = tuple(t.patch_size) if t.patch_size else None
    if train:
        transform = train_transforms(dataset.task, dataset.spatial_dims, patch_size=patch, modality=t.modality,
                                     flips=t.flips, rotations=t.rotations, pos_neg_ratio=t.pos_neg_ratio)
    else:
        transform = eval_transforms(dataset.task, dataset.spatial_dims, modality=t.modality)
    return dataset, transform


def model_arguments(config: Config, dataset: Any) -> dict[str, Any]:
    """The model's constructor arguments: the dataset's dims and channels unless the config sets them."""
    out_channels = dataset.in_channels if dataset.task == "restoration" else dataset.num_classes
    # A bag or a token sequence has no spatial axes.
    dims = {} if dataset.task in ("mil", *SEQUENCE_TASKS) else {"spatial_dims": dataset.spatial_dims}
    return {**dims, "in_channels": dataset.in_channels, "out_channels": out_channels, **config.model.args}


def warn_absent_classes(num_classes: int, splits: dict[str, Any]) -> list[int]:
    """Warn (and return them) when some of a classification model's ``num_classes`` classes occur in none of
    the ``splits`` ({name: data set with a ``labels`` tensor of class indices}), with each split's counts: a
    class no split holds is usually a wrong ``num_classes``, which otherwise trains silently."""
    counts = {}
    for name, dataset in splits.items():
        labels = getattr(dataset, "labels", None)
        if labels is None or getattr(dataset, "task", None) != "classification":
            return []  # segmentation masks would have to be read: not checked here
        values, numbers = torch.as_tensor(labels).flatten().unique(return_counts=True)
        counts[name] = dict(zip(values.tolist(), numbers.tolist(), strict=True))
    absent = sorted(set(range(num_classes)) - {c for split in counts.values() for c in split})
    if absent:
        logger.warning("num_classes is %d but classes %s occur in no split; label counts: %s", num_classes,
                       absent, "; ".join(f"{name} {split}" for name, split in counts.items()))
    return absent


def check_model_task(config: Config, task: str) -> None:
    """Raise ValueError unless the config's model is registered for the task of its data set."""
    model_task = get_entry(config.model.name).task
    if model_task != MODEL_TASK[task]:
        raise ValueError(f"model {config.model.name!r} is a {model_task} model but dataset {config.data.name!r} "
                         f"is a {task} task")


def roi_size(config: Config, task: str) -> tuple[int, ...] | None:
    """The sliding-window size for a dense task (the config's, else the training patch); None otherwise."""
    if task not in DENSE_TASKS:
        return None
    size = config.inference.roi_size or config.transforms.patch_size
    return tuple(size) if size else None


def evaluation_loader(dataset: Dataset, transform: Any, task: str, batch_size: int, info: DistInfo,
                      num_workers: int) -> DataLoader:
    """This rank's shard of an evaluation set; dense tasks and bags go one case at a time (sizes may differ)."""
    view = Subset(SeededTransformDataset(dataset, transform, 0), shard_indices(len(dataset), info))
    dense = task in DENSE_TASKS or task == "mil"
    return DataLoader(view, batch_size=1 if dense else batch_size, shuffle=False, num_workers=num_workers)


def make_loss(name: str, task: str, class_weights: list[float] | None = None) -> nn.Module:
    """The loss ``train.loss`` names; ``"auto"`` is the task's default (:data:`DEFAULT_LOSS`).

    ``class_weights`` (``train.class_weights`` resolved, see :mod:`medssm.engine.imbalance`) weigh the
    cross-entropy of ``ce`` and the cross-entropy part of ``dice_ce`` (the Dice part stays unweighted), and
    are ``bce``'s ``pos_weight``."""
    check_supported(task, tuple(DEFAULT_LOSS), "the training losses")
    name = DEFAULT_LOSS[task] if name == "auto" else name
    weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
    if name == "dice_ce":
        loss = DiceCELoss(to_onehot_y=True, softmax=True)
        if weight is not None:  # MONAI's weight= would weigh the Dice term too
            loss.cross_entropy = nn.CrossEntropyLoss(weight=weight)
        return loss
    losses = {"ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss, "l1": nn.L1Loss, "mse": nn.MSELoss}
    if name not in losses:
        raise ValueError(f"train.loss must be 'auto', 'dice_ce' or one of {sorted(losses)}, got {name!r}")
    if weight is None:
        return losses[name]()
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weight)
    if name == "bce":
        return nn.BCEWithLogitsLoss(pos_weight=weight)
    raise ValueError(f"train.class_weights weigh the ce, bce and dice_ce losses, not {name}")


def has_checkpoint(out_dir: Path) -> bool:
    """Whether a run folder holds a resumable checkpoint (``checkpoints/last``, or its ``.old`` mid-swap)."""
    last = out_dir / "checkpoints" / "last"
    return last.exists() or last.with_name("last.old").exists()


def prepare_run_dir(out_dir: Path, overwrite: bool) -> None:
    """Create a new run folder; an existing non-empty one is replaced only with ``overwrite`` and only if it
    is a medssm run folder. A run folder without a checkpoint (a run that failed before its first one) holds
    nothing to keep and is reused without ``overwrite``."""
    if out_dir.exists() and any(out_dir.iterdir()):
        started = has_checkpoint(out_dir) or not (out_dir / "config.yaml").exists()
        if not overwrite and started:
            raise FileExistsError(f"run folder {out_dir} is not empty; pass --resume to continue that run or "
                                  "--overwrite to start again")
        if not (out_dir / "config.yaml").exists():
            raise FileExistsError(f"--overwrite refuses to empty {out_dir}: it does not look like a medssm run "
                                  "folder (no config.yaml)")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def load_run_config(out_dir: Path) -> Config:
    """The resolved config a run saved in its folder (what ``--resume`` continues with)."""
    path = out_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist")
    return config_from_dict(yaml.safe_load(path.read_text()), str(path))


def resolve_run_checkpoint(path: str | Path) -> Path:
    """A run folder means its best checkpoint; a checkpoint folder or file is used as is."""
    path = Path(path)
    if (path / "checkpoints" / "best").exists():
        return path / "checkpoints" / "best"
    read_meta(path)  # raises a clear error for anything that is not a checkpoint
    return path


def case_names(dataset: Any) -> list[str] | None:
    """The split's case ids (folder and nnU-Net datasets), recorded in the checkpoint for reproducibility."""
    names = getattr(dataset, "cases", None)
    return [str(n) for n in names] if names is not None else None


def versions() -> dict[str, str]:
    """The medssm and torch versions, recorded in every checkpoint."""
    return {"medssm": __version__, "torch": torch.__version__}
