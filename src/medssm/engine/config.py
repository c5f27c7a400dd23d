"""Training configs: small dataclasses loaded from YAML, with dotted command-line overrides.

A config file has up to five sections (see ``configs/*.yaml``)::

    model:     {name: mini_mamba_unet, args: {features: [16, 32, 64, 128]}}
    data:      {name: synthetic, args: {...}, train_split: train, val_split: val, test_split: test}
    transforms: {modality: raster, patch_size: [64, 64], flips: true, rotations: true}
    train:     {max_steps: 300, batch_size: 8, lr: 1.0e-3, ...}
    inference: {roi_size: null, overlap: 0.25, tta: false}

Overrides are ``section.key=value`` strings (``train.lr=3e-4``, ``data.args.root=/data/drive``); the value
is parsed as YAML, so numbers, booleans, lists and null work. The resolved config is saved next to the
checkpoints, and a resumed run reloads it from there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .files import write_text_atomic


@dataclass
class ModelConfig:
    """The ``model`` section: which registered model to build and its constructor arguments.

    Attributes:
        name: a registered model (``medssm models`` lists them; ``medssm models --task classification``).
        args: the model's constructor arguments (each family's docstring lists them); ``spatial_dims``,
            ``in_channels`` and ``out_channels`` default to the data set's.
    """
    name: str = "mini_mamba_unet"
    args: dict[str, Any] = field(default_factory=dict)  # spatial_dims/in/out channels default from the data


@dataclass
class DataConfig:
    """The ``data`` section: the data set and the names of its three splits.

    Attributes:
        name: a data set of ``medssm.data.DATASETS`` (its arguments: "Data set arguments" in docs/configs.md).
        args: the data set's constructor arguments (``root``, ``path``, ``mask_threshold``...), without
            ``split`` and ``transform``, which the harness sets.
        train_split: the split the model is trained on.
        val_split: the split validated during training (model selection, early stopping).
        test_split: the split ``medssm evaluate`` scores by default.
    """
    name: str = "synthetic"  # a medssm.data.build_dataset name
    args: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"


@dataclass
class TransformConfig:
    """The ``transforms`` section: intensity normalisation and training augmentation presets.

    Attributes:
        modality: the intensity normalisation: ``raster`` (none: the data sets give [0, 1]), ``ct`` (clip
            to [-1000, 1000] HU, scale to [0, 1]), ``mr`` (z-score over the non-zero voxels) or ``signal``
            (z-score per channel).
        patch_size: random training crops of this size for dense tasks, one side per spatial axis; also the
            sliding-window size of inference unless ``inference.roi_size`` is set. null: whole images.
        flips: random flips along every spatial axis; null: on for dense tasks, off for classification and
            1D signals.
        rotations: random 90-degree rotations in the plane of the first two spatial axes; null: as
            ``flips``.
        pos_neg_ratio: segmentation crops are centred on a foreground voxel with probability
            pos_neg_ratio / (pos_neg_ratio + 1), else anywhere.
    """
    modality: str = "raster"  # raster | ct | mr | signal: the intensity normalisation
    patch_size: list[int] | None = None  # random crops for dense tasks; also the sliding-window roi by default
    flips: bool | None = None  # None: on for dense tasks, off for classification and 1D signals
    rotations: bool | None = None
    pos_neg_ratio: float = 1.0  # foreground oversampling of the random crops


@dataclass
class TrainConfig:
    """The ``train`` section: run length, optimiser, loss, imbalance handling, validation and checkpoints.

    Attributes:
        max_steps: the run length in optimizer steps; give this or ``epochs`` (an override of one clears the
            other).
        epochs: the run length in passes over the training split (batches per epoch: split size // batch).
        batch_size: the global batch, split evenly across DDP processes.
        accumulate: batches of ``batch_size`` per optimizer step (gradient accumulation; e.g. MIL bags, one
            at a time).
        optimizer: ``adamw`` (decoupled weight decay) or ``adam`` (L2 weight decay, as Ilse et al.'s MIL).
        lr: the optimizer's peak learning rate.
        weight_decay: the optimizer's weight decay (decoupled for adamw, L2 for adam).
        warmup_steps: steps of linear learning-rate warm-up before the cosine decay.
        min_lr_ratio: the cosine schedule ends at ``lr * min_lr_ratio``.
        grad_clip: clip the gradients' global norm to this value; null: no clipping.
        amp: mixed precision: ``none``, ``bf16`` or ``fp16`` (autocast on the network; the selective scan
            stays fp32).
        loss: ``auto`` (the task's: dice_ce, ce, bce or l1), ``dice_ce``, ``ce``, ``bce``, ``l1`` or ``mse``.
        class_weights: ``auto`` (inverse class frequency in the training split, mean 1; multilabel:
            negatives/positives as BCE pos_weight) or one weight per class; weighs ce, the CE part of
            dice_ce and bce; saved as class_weights.json. null: unweighted.
        sampler: ``shuffle`` (a seeded permutation per epoch) or ``balanced`` (classification: samples drawn
            with replacement so that every class is drawn equally often).
        seed: seeds the weights' initialisation, the batch order and every augmentation.
        deterministic: ``torch.use_deterministic_algorithms(True)`` (slower; errors on ops without one).
        val_every: steps between validations (and one at the end).
        checkpoint_every: steps between saves of the resumable ``checkpoints/last``.
        log_every: steps between rows of log.jsonl (mean training loss, learning rate).
        early_stopping: stop after this many validations without improvement; 0: never.
        select_metric: the validation metric that picks ``checkpoints/best`` (e.g. balanced_accuracy, dice_1,
            hd95); auto: the task's (dice, auc, auc, psnr).
        num_workers: DataLoader worker processes (results do not depend on it).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:<index>``; ``--device`` overrides it.
        task_weights: loss weight of each extra head of ``model.args.tasks`` (event models, e.g. ``{los:
            0.5}``); unnamed heads weigh 1 (see engine/multitask.py). null: every head weighs 1.
    """
    max_steps: int | None = None  # the run length in optimizer steps; or give epochs
    epochs: int | None = None
    batch_size: int = 8  # the global batch: split evenly across DDP processes
    accumulate: int = 1  # batches of batch_size per optimizer step (gradient accumulation)
    optimizer: str = "adamw"  # adamw (decoupled weight decay) | adam (L2 weight decay, as Ilse et al.'s MIL)
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01  # the cosine schedule ends at lr * min_lr_ratio
    grad_clip: float | None = 1.0
    amp: str = "none"  # none | bf16 | fp16 (autocast on the network; the selective scan stays fp32)
    loss: str = "auto"  # auto | dice_ce | ce | bce | l1 | mse
    class_weights: str | list[float] | None = None  # auto | one weight per class (see engine/imbalance.py)
    sampler: str = "shuffle"  # shuffle | balanced (classification: every class drawn equally often)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms
    val_every: int = 100  # steps between validations (and at the end)
    checkpoint_every: int = 50  # steps between checkpoints of the resumable state
    log_every: int = 10
    early_stopping: int = 0  # stop after this many validations without improvement; 0 = never
    select_metric: str = "auto"  # the validation metric that picks the best checkpoint; auto: the task's
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    task_weights: dict[str, float] | None = None  # extra heads' loss weights (model.args.tasks); default 1


@dataclass
class InferenceConfig:
    """The ``inference`` section: how validation, ``medssm evaluate`` and ``medssm predict`` run the model.

    Attributes:
        roi_size: the sliding-window size for dense tasks; null: ``transforms.patch_size`` (null too: whole
            images).
        overlap: the sliding windows' overlap as a fraction of their size, in [0, 1).
        sw_batch_size: windows run through the model at once.
        tta: test-time augmentation: average the predictions over flips of every spatial axis.
        mode: how overlapping sliding windows are blended: ``gaussian`` (centre-weighted, hides seams) or
            ``constant`` (plain mean).
    """
    roi_size: list[int] | None = None  # sliding-window size; default: transforms.patch_size for dense tasks
    overlap: float = 0.25
    sw_batch_size: int = 4
    tta: bool = False  # average over flips of every spatial axis
    mode: str = "gaussian"  # sliding-window blending: gaussian (centre-weighted, hides seams) | constant


@dataclass
class Config:
    """A whole training config: the five sections, each a dataclass above (docs/configs.md lists every key)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    transforms: TransformConfig = field(default_factory=TransformConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


AMP_MODES = ("none", "bf16", "fp16")
MODALITIES = ("raster", "ct", "mr", "signal")
OPTIMIZERS = ("adamw", "adam")
SAMPLERS = ("shuffle", "balanced")  # engine/imbalance.py


def config_from_dict(raw: dict[str, Any], source: str = "config", overridden: dict[str, str] | None = None
                     ) -> Config:
    """Build a Config, rejecting unknown sections and keys (naming them and the source).

    ``overridden`` maps "section.key" to the command-line override that set it, so that a bad value is
    reported as coming from the command line rather than from the file."""
    overridden = overridden or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ValueError(f"{source}: unknown section(s) {unknown}; expected {sorted(sections)}")
    parts = {}
    for f in dataclasses.fields(Config):
        cls = f.default_factory
        values = raw.get(f.name) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {f.name!r} must be a mapping, got {values!r}")
        keys = {g.name for g in dataclasses.fields(cls)}
        bad = sorted(set(values) - keys)
        if bad:
            raise ValueError(f"{source}: unknown key(s) {bad} in section {f.name!r}; expected {sorted(keys)}")
        parts[f.name] = cls(**{g.name: _coerce(values[g.name], str(g.type), f"{f.name}.{g.name}",
                                               _source(f"{f.name}.{g.name}", source, overridden))
                               for g in dataclasses.fields(cls) if g.name in values})
    config = Config(**parts)
    _validate(config, source)
    return config


def _source(key: str, source: str, overridden: dict[str, str]) -> str:
    """Where the value of ``key`` came from: the command-line override that set it, or the config source."""
    return f"command-line override {overridden[key]!r}" if key in overridden else source


def _coerce(value: Any, annotation: str, where: str, source: str) -> Any:
    """Check ``value`` against the field's annotation (e.g. "float", "list[int] | None"). Numbers written
    like ``3e-4`` are strings to YAML 1.1, so strings that parse as the expected number are converted."""
    options = [a.strip() for a in annotation.split("|")]
    if "list[float]" in options and isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    if value is None:
        if "None" in options:
            return None
        raise ValueError(f"{source}: {where} must not be null")
    base = options[0]
    if base == "float" and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    elif base == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif base == "bool" and isinstance(value, bool):
        return value
    elif base == "str" and isinstance(value, str):
        return value
    elif base == "list[int]" and isinstance(value, (list, tuple)) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    elif base.startswith("dict") and isinstance(value, dict):
        return value
    raise ValueError(f"{source}: {where} must be {annotation}, got {value!r}")


def _validate(config: Config, source: str) -> None:
    train = config.train
    if (train.max_steps is None) == (train.epochs is None):
        raise ValueError(f"{source}: give exactly one of train.max_steps and train.epochs")
    for name in ("max_steps", "epochs"):
        value = getattr(train, name)
        if value is not None and value < 1:
            raise ValueError(f"{source}: train.{name} must be a positive integer, got {value!r}")
    if train.amp not in AMP_MODES:
        raise ValueError(f"{source}: train.amp must be one of {AMP_MODES}, got {train.amp!r}")
    _validate_imbalance(train, source)
    for head, weight in (train.task_weights or {}).items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < float("inf"):
            raise ValueError(f"{source}: train.task_weights[{head!r}] must be a non-negative number, got {weight!r}")
    if config.transforms.modality not in MODALITIES:
        raise ValueError(f"{source}: transforms.modality must be one of {MODALITIES}, "
                         f"got {config.transforms.modality!r}")
    if train.optimizer not in OPTIMIZERS:
        raise ValueError(f"{source}: train.optimizer must be one of {OPTIMIZERS}, got {train.optimizer!r}")
    for name in ("batch_size", "accumulate", "val_every", "checkpoint_every", "log_every"):
        if getattr(train, name) < 1:
            raise ValueError(f"{source}: train.{name} must be >= 1, got {getattr(train, name)}")
    if not 0 <= config.inference.overlap < 1:
        raise ValueError(f"{source}: inference.overlap must be in [0, 1), got {config.inference.overlap}")
    if config.inference.mode not in ("gaussian", "constant"):
        raise ValueError(f"{source}: inference.mode must be gaussian or constant, got {config.inference.mode!r}")


def _validate_imbalance(train: TrainConfig, source: str) -> None:
    """train.class_weights ("auto" or non-negative finite numbers, not all 0) and train.sampler; the number
    of weights is checked against the classes when the data set is known (engine/imbalance.py)."""
    weights = train.class_weights
    if isinstance(weights, str) and weights != "auto":
        raise ValueError(f"{source}: train.class_weights must be auto, a list of floats or null, got {weights!r}")
    if isinstance(weights, list) and (not weights or not all(0 <= w < float("inf") for w in weights)
                                      or not any(weights)):
        raise ValueError(f"{source}: train.class_weights must be non-negative finite numbers, not all 0, "
                         f"got {weights!r}")
    if train.sampler not in SAMPLERS:
        raise ValueError(f"{source}: train.sampler must be one of {SAMPLERS}, got {train.sampler!r}")


# Keys that say the same thing two ways: an override of one clears the other (unless both are overridden).
_EXCLUSIVE = (("train.max_steps", "train.epochs"),)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``a.b.c=value`` entries (value parsed as YAML) in a nested dict, creating mappings as needed.

    An override of ``train.max_steps`` clears the config's ``train.epochs`` and the other way round, so that
    ``train.max_steps=2`` switches a config given in epochs to steps."""
    for key in _overridden_keys(overrides):
        for pair in _EXCLUSIVE:
            if key in pair:
                other = pair[1 - pair.index(key)]
                section, name = other.split(".")
                if other not in _overridden_keys(overrides) and isinstance(raw.get(section), dict):
                    raw[section].pop(name, None)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: cannot parse the value as YAML ({error})") from error
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return raw


def _overridden_keys(overrides: list[str]) -> dict[str, str]:
    """``{"section.key": the override's text}`` for each well-formed ``section.key=value`` override."""
    return {item.partition("=")[0]: item for item in overrides if "=" in item}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from the defaults), apply overrides and validate."""
    raw: dict[str, Any] = {}
    source = "command-line overrides"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error})") from error
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source, _overridden_keys(overrides or []))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
