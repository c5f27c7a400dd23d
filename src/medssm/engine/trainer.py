"""One training loop for segmentation, classification, multi-label, restoration and 1D tasks.

The run folder holds ``config.yaml`` (resolved), ``log.jsonl`` (one row per logged step or validation),
``curves.png`` (refreshed at every validation), ``checkpoints/last`` (resumable) and ``checkpoints/best``
(weights of the best validation score), and ``val_metrics.json`` at the end.

Exact resumption: every source of randomness is either saved in the checkpoint (torch/NumPy/Python RNG
states, optimizer, scheduler, grad scaler, counters) or derived from (seed, epoch, sample index): the
batch order is a seeded permutation per epoch, each sample's augmentation is seeded from its index, and the
DataLoader gets its own generator so that creating a loader mid-epoch does not consume the global RNG. A run
killed at any moment and resumed from its last checkpoint therefore replays the same steps.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from .checkpoint import capture_train_state, load_weights, read_meta, restore_train_state, save_checkpoint
from .config import Config, config_from_dict, save_config
from .distributed import (
    DistInfo,
    ShardedBatchSampler,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    mean_across_ranks,
    shard_indices,
)

logger = logging.getLogger(__name__)

MODEL_TASK = {"segmentation": "segmentation", "classification": "classification",
              "multilabel": "classification", "restoration": "restoration"}
DEFAULT_LOSS = {"segmentation": "dice_ce", "classification": "ce", "multilabel": "bce", "restoration": "l1"}


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


def make_loss(name: str, task: str) -> nn.Module:
    name = DEFAULT_LOSS[task] if name == "auto" else name
    if name == "dice_ce":
        from monai.losses import DiceCELoss

        return DiceCELoss(to_onehot_y=True, softmax=True)
    losses = {"ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss, "l1": nn.L1Loss, "mse": nn.MSELoss}
    if name not in losses:
        raise ValueError(f"train.loss must be 'auto', 'dice_ce' or one of {sorted(losses)}, got {name!r}")
    return losses[name]()


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def build_split(config: Config, split: str, train: bool):
    """The dataset of ``split`` with the preset transforms (training or evaluation)."""
    from ..data import build_dataset
    from ..data.transforms import eval_transforms, train_transforms

    dataset = build_dataset(config.data.name, split=split, **config.data.args)
    t = config.transforms
    patch = tuple(t.patch_size) if t.patch_size else None
    if train:
        transform = train_transforms(dataset.task, dataset.spatial_dims, patch_size=patch, modality=t.modality,
                                     flips=t.flips, rotations=t.rotations, pos_neg_ratio=t.pos_neg_ratio)
    else:
        transform = eval_transforms(dataset.task, dataset.spatial_dims, modality=t.modality)
    return dataset, transform


def model_arguments(config: Config, dataset) -> dict[str, Any]:
    """The model's constructor arguments: the dataset's dims and channels unless the config sets them."""
    out_channels = dataset.in_channels if dataset.task == "restoration" else dataset.num_classes
    return {"spatial_dims": dataset.spatial_dims, "in_channels": dataset.in_channels, "out_channels": out_channels,
            **config.model.args}


def roi_size(config: Config, task: str) -> tuple[int, ...] | None:
    if task not in ("segmentation", "restoration"):
        return None
    size = config.inference.roi_size or config.transforms.patch_size
    return tuple(size) if size else None


def evaluation_loader(dataset: Dataset, transform: Any, task: str, batch_size: int, info: DistInfo,
                      num_workers: int) -> DataLoader:
    """This rank's shard of an evaluation set; dense tasks go one case at a time (sizes may differ)."""
    view = Subset(SeededTransformDataset(dataset, transform, 0), shard_indices(len(dataset), info))
    dense = task in ("segmentation", "restoration")
    return DataLoader(view, batch_size=1 if dense else batch_size, shuffle=False, num_workers=num_workers)


@torch.no_grad()
def run_validation(model: nn.Module, loader: DataLoader, task: str, num_classes: int, config: Config,
                   device: torch.device) -> dict[str, float]:
    from .inference import infer
    from .metrics import Metrics

    metrics = Metrics(task, num_classes, hd95=False)  # HD95 at every validation is too slow; evaluate has it
    inf = config.inference
    for batch in loader:
        image = batch["image"].to(device)
        output = infer(model, image, task, roi_size=roi_size(config, task), overlap=inf.overlap,
                       sw_batch_size=inf.sw_batch_size, tta_flips=inf.tta)
        fov = batch.get("fov")
        metrics.update(output.float().cpu(), batch["label"], fov=fov)
    return metrics.compute()


class RunLog:
    """log.jsonl rows (rank 0 writes; every rank keeps the rows for the curves)."""

    def __init__(self, path: Path, info: DistInfo) -> None:
        self.path, self.info, self.rows = path, info, []

    def load(self, up_to_step: int) -> None:
        """Keep the rows of steps already covered by the checkpoint (a killed run logged past it)."""
        if self.path.exists():
            rows = []
            for line in self.path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # the line a kill cut short
                    continue
            self.rows = [r for r in rows if r.get("step", 0) <= up_to_step]
        if self.info.is_main:
            from .files import write_text_atomic

            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.info.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")


def prepare_run_dir(out_dir: Path, overwrite: bool) -> None:
    """Create a new run folder; an existing non-empty one is replaced only with ``overwrite`` and only if it
    is a medssm run folder."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"run folder {out_dir} is not empty; pass --resume to continue that run or "
                                  "--overwrite to start again")
        if not (out_dir / "config.yaml").exists():
            raise FileExistsError(f"--overwrite refuses to empty {out_dir}: it does not look like a medssm run "
                                  "folder (no config.yaml)")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def train(config: Config | None, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> dict[str, Any]:
    """Train a model as ``config`` says, writing into ``out_dir``; ``resume`` continues a run from its last
    checkpoint with its saved config. Returns a summary (final step, best score, final validation metrics)."""
    out_dir = Path(out_dir)
    if resume:
        import yaml

        if not (out_dir / "config.yaml").is_file():
            raise FileNotFoundError(f"cannot resume: {out_dir / 'config.yaml'} does not exist")
        config = config_from_dict(yaml.safe_load((out_dir / "config.yaml").read_text()), str(out_dir / "config.yaml"))
    if config is None:
        raise ValueError("train() needs a config unless resume=True")
    tc = config.train
    device = pick_device(tc.device)
    info = init_distributed(device.type)
    try:
        if info.is_main and not resume:
            prepare_run_dir(out_dir, overwrite)
            save_config(config, out_dir / "config.yaml")
        barrier(info)
        return _train(config, out_dir, resume, progress, device, info)
    finally:
        cleanup_distributed()


def _train(config: Config, out_dir: Path, resume: bool, progress: bool, device: torch.device,
           info: DistInfo) -> dict[str, Any]:
    from ..models import create_model, get_entry
    from .metrics import HIGHER_IS_BETTER, PRIMARY_METRIC
    from .report import plot_curves

    tc = config.train
    torch.manual_seed(tc.seed)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)

    train_set, train_transform = build_split(config, config.data.train_split, train=True)
    val_set, val_transform = build_split(config, config.data.val_split, train=False)
    task = train_set.task
    model_args = model_arguments(config, train_set)
    model_task = get_entry(config.model.name).task
    if model_task != MODEL_TASK[task]:
        raise ValueError(f"model {config.model.name!r} is a {model_task} model but dataset {config.data.name!r} "
                         f"is a {task} task")
    model = create_model(config.model.name, **model_args).to(device)
    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    sampler = ShardedBatchSampler(len(train_set), tc.batch_size, info, tc.seed)
    steps_per_epoch = sampler.batches_per_epoch()
    total_steps = tc.max_steps or tc.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, total_steps, tc.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.amp)
    loss_fn = make_loss(tc.loss, task)
    metric = PRIMARY_METRIC[task]
    higher = HIGHER_IS_BETTER[metric]

    counters = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "best_step": None, "bad_validations": 0,
                "last_val": None}
    log = RunLog(out_dir / "log.jsonl", info)
    last_dir, best_dir = out_dir / "checkpoints" / "last", out_dir / "checkpoints" / "best"
    if resume:
        if not last_dir.exists() and not last_dir.with_name("last.old").exists():
            raise FileNotFoundError(f"{out_dir}: no checkpoint to resume from (the run stopped before its first "
                                    "checkpoint); start it again with --overwrite")
        model.load_state_dict(load_weights(last_dir), strict=True)
        counters = restore_train_state(last_dir, optimizer, scheduler, scaler)
        log.load(counters["step"])
        logger.info("resumed %s at step %d (epoch %d, batch %d)", out_dir, counters["step"], counters["epoch"],
                    counters["batch_in_epoch"])

    meta_base = {"model": config.model.name, "model_args": model_args, "task": task,
                 "num_classes": train_set.num_classes, "config": config.to_dict(), "seed": tc.seed,
                 "data": {"name": config.data.name, "train_split": config.data.train_split,
                          "train_size": len(train_set), "val_split": config.data.val_split,
                          "val_size": len(val_set), "train_cases": _case_names(train_set),
                          "val_cases": _case_names(val_set)},
                 "versions": _versions()}

    def save_last() -> None:
        if info.is_main:
            state = capture_train_state(optimizer, scheduler, scaler, counters)
            save_checkpoint(last_dir, model, {**meta_base, "step": counters["step"], "epoch": counters["epoch"],
                                              "metrics": counters["last_val"]}, state)
        barrier(info)

    train_view = SeededTransformDataset(train_set, train_transform, tc.seed)
    val_loader = evaluation_loader(val_set, val_transform, task, tc.batch_size, info, tc.num_workers)
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=counters["step"], desc="train", unit="step", dynamic_ncols=True)

    stop = counters["step"] >= total_steps
    running, started = [], time.time()
    while not stop:
        sampler.set_epoch(counters["epoch"], counters["batch_in_epoch"])
        train_view.set_epoch(counters["epoch"])
        loader = DataLoader(train_view, batch_sampler=sampler, num_workers=tc.num_workers,
                            generator=torch.Generator().manual_seed(tc.seed + counters["epoch"]))
        for batch in loader:
            train_model.train()
            image, label = batch["image"].to(device), batch["label"].to(device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                output = train_model(image)
            loss = loss_fn(output.float(), label.float() if task in ("multilabel", "restoration") else label)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {counters['step'] + 1}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            counters["step"] += 1
            counters["batch_in_epoch"] += 1
            step = counters["step"]
            running.append(loss.item())

            if step % tc.log_every == 0 or step == total_steps:
                loss_value = mean_across_ranks(sum(running) / len(running), info)
                running = []
                log.append({"step": step, "epoch": counters["epoch"], "train_loss": loss_value,
                            "lr": scheduler.get_last_lr()[0], "time": round(time.time() - started, 2)})
                if bar is not None:
                    shown = {"loss": f"{loss_value:.4f}"}
                    if counters["best"] is not None:
                        shown["best " + metric] = f"{counters['best']:.4f}"
                    bar.set_postfix(shown, refresh=False)
            if step % tc.val_every == 0 or step == total_steps:
                scores = run_validation(model, val_loader, task, train_set.num_classes, config, device)
                score = scores[metric]
                improved = counters["best"] is None or (score > counters["best"] if higher else
                                                        score < counters["best"])
                counters["last_val"] = scores
                if improved:
                    counters["best"], counters["best_step"], counters["bad_validations"] = score, step, 0
                    if info.is_main:
                        save_checkpoint(best_dir, model, {**meta_base, "step": step, "epoch": counters["epoch"],
                                                          "metrics": scores})
                else:
                    counters["bad_validations"] += 1
                log.append({"step": step, "epoch": counters["epoch"], **{f"val_{k}": v for k, v in scores.items()},
                            "best": improved})
                if info.is_main:
                    plot_curves(log.rows, out_dir / "curves.png")
                if bar is not None:
                    bar.set_postfix(**{metric: f"{score:.4f}", "best": f"{counters['best']:.4f}"}, refresh=False)
                if tc.early_stopping and counters["bad_validations"] >= tc.early_stopping:
                    logger.info("early stopping at step %d: %d validations without improvement", step,
                                counters["bad_validations"])
                    stop = True
            stop = stop or step >= total_steps
            if step % tc.checkpoint_every == 0 or stop:
                save_last()
            if bar is not None:
                bar.update(1)
            if stop:
                break
        if counters["batch_in_epoch"] >= steps_per_epoch:
            counters["epoch"] += 1
            counters["batch_in_epoch"] = 0
    if bar is not None:
        bar.close()

    summary = {"step": counters["step"], "epoch": counters["epoch"], "best_metric": metric,
               "best": counters["best"], "best_step": counters["best_step"], "val_metrics": counters["last_val"]}
    summary = broadcast_object(summary, info)
    if info.is_main:
        from .files import write_text_atomic

        write_text_atomic(out_dir / "val_metrics.json", json.dumps(summary, indent=2))
        plot_curves(log.rows, out_dir / "curves.png")
    return summary


def _case_names(dataset) -> list[str] | None:
    """The split's case ids (folder and nnU-Net datasets), recorded in the checkpoint for reproducibility."""
    names = getattr(dataset, "cases", None)
    return [str(n) for n in names] if names is not None else None


def _versions() -> dict[str, str]:
    import medssm

    return {"medssm": medssm.__version__, "torch": torch.__version__}


def resolve_run_checkpoint(path: str | Path) -> Path:
    """A run folder means its best checkpoint; a checkpoint folder or file is used as is."""
    path = Path(path)
    if (path / "checkpoints" / "best").exists():
        return path / "checkpoints" / "best"
    read_meta(path)  # raises a clear error for anything that is not a checkpoint
    return path
