"""One training loop for segmentation, classification, multi-label, restoration and 1D tasks.

The run folder holds ``config.yaml`` (resolved), ``splits.json`` (the cases of each split, checked on resume;
see :mod:`medssm.engine.folds`), ``log.jsonl`` (one row per logged step or validation),
``curves.png`` (refreshed at every validation), ``checkpoints/last`` (resumable) and ``checkpoints/best``
(weights of the best validation score), and ``val_metrics.json`` at the end.

Exact resumption: every source of randomness is either saved in the checkpoint (torch/NumPy/Python RNG
states, optimizer, scheduler, grad scaler, counters) or derived from (seed, epoch, sample index): the
batch order is a seeded permutation per epoch, each sample's augmentation is seeded from its index, and the
DataLoader gets its own generator so that creating a loader mid-epoch does not consume the global RNG. A run
killed at any moment and resumed from its last checkpoint therefore replays the same steps.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from ..models import create_model
from .checkpoint import capture_train_state, load_weights, read_meta, restore_train_state, save_checkpoint
from .config import Config, save_config
from .distributed import (
    DistInfo,
    ShardedBatchSampler,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    mean_across_ranks,
)
from .files import write_text_atomic
from .folds import save_or_check_splits, split_record
from .imbalance import make_train_sampler, resolve_class_weights
from .inference import infer
from .metrics import Metrics, higher_is_better, selection_metric
from .multitask import MultiTask, setup_multitask
from .report import plot_curves
from .setup import (
    SeededTransformDataset,
    build_split,
    case_names,
    check_model_task,
    evaluation_loader,
    has_checkpoint,
    load_run_config,
    make_loss,
    model_arguments,
    pick_device,
    prepare_run_dir,
    roi_size,
    versions,
    warn_absent_classes,
)

logger = logging.getLogger(__name__)

# The tasks whose targets are float tensors for the loss (the others are class indices).
FLOAT_TARGET_TASKS = ("multilabel", "restoration")


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def run_validation(model: nn.Module, loader: DataLoader, task: str, num_classes: int, config: Config,
                   device: torch.device) -> dict[str, float]:
    """Metrics of ``model`` over ``loader`` (this rank's shard; ``compute`` gathers every rank's), without HD95."""
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
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.info.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")



def train(config: Config | None, out_dir: str | Path, resume: bool = False, overwrite: bool = False,
          progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Train a model as ``config`` says, writing into ``out_dir``; ``resume`` continues a run from its last
    checkpoint with its saved config. Returns a summary (final step, best score, final validation metrics)."""
    out_dir = Path(out_dir)
    if resume:
        if (out_dir / "config.yaml").is_file() and not has_checkpoint(out_dir):  # before the saved config,
            # which may be what made the run fail
            raise FileNotFoundError(f"{out_dir}: no checkpoint to resume from (the run stopped before its first "
                                    "checkpoint); start it again without --resume: the folder is reused")
        config = load_run_config(out_dir)
    if config is None:
        raise ValueError("train() needs a config unless resume=True")
    if device is not None:  # the command line's --device, also for a resumed run
        config.train.device = device
    device = pick_device(config.train.device)
    info = init_distributed(device.type)
    try:
        if info.is_main and not resume:
            prepare_run_dir(out_dir, overwrite)
            save_config(config, out_dir / "config.yaml")
        barrier(info)
        run = _setup_run(config, out_dir, resume, device, info)
        return _train(run, progress)
    finally:
        cleanup_distributed()


@dataclass
class _Run:
    """One rank's training run: what set-up built and the counters that a checkpoint saves."""

    config: Config
    out_dir: Path
    info: DistInfo
    device: torch.device
    task: str
    num_classes: int
    model: nn.Module  # the bare model (saved, validated)
    train_model: nn.Module  # the model wrapped in DistributedDataParallel when several processes train
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    loss_fn: nn.Module
    sampler: ShardedBatchSampler
    train_view: SeededTransformDataset
    val_loader: DataLoader
    steps_per_epoch: int
    total_steps: int
    metric: str  # the validation metric that picks the best checkpoint
    log: RunLog
    meta: dict[str, Any]  # the checkpoint metadata every save shares
    counters: dict[str, Any]
    multitask: MultiTask | None = None  # extra heads trained with the main one (engine/multitask.py)

    @property
    def last_dir(self) -> Path:
        return self.out_dir / "checkpoints" / "last"

    @property
    def best_dir(self) -> Path:
        return self.out_dir / "checkpoints" / "best"


def _setup_run(config: Config, out_dir: Path, resume: bool, device: torch.device, info: DistInfo) -> _Run:
    """Seed, build data, model, optimizer and loss, and restore the last checkpoint when resuming.

    The order of the steps is part of exact resumption: each one that draws from the global RNG (the model's
    initial weights) runs after ``torch.manual_seed`` in the same order in a new run and a resumed one.
    """
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
    if info.is_main:
        warn_absent_classes(model_args["out_channels"], {"train": train_set, "val": val_set})
    check_model_task(config, task)
    # The split is saved (and checked on resume) before the model is built: it draws nothing from the RNG.
    save_or_check_splits(out_dir, split_record(config, {"train": train_set, "val": val_set}), resume, info.is_main)
    model = create_model(config.model.name, **model_args).to(device)
    train_model: nn.Module = model
    if info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    # One sampler batch is one optimizer step: ``accumulate`` micro-batches of batch_size (see micro_batches).
    sampler = make_train_sampler(tc.sampler, train_set, task, tc.batch_size * tc.accumulate, info, tc.seed)
    class_weights = resolve_class_weights(tc.class_weights, train_set, task, model_args["out_channels"], out_dir,
                                          resume, info)
    total_steps = tc.max_steps or tc.epochs * sampler.batches_per_epoch()
    optimizer_class = torch.optim.Adam if tc.optimizer == "adam" else torch.optim.AdamW
    optimizer = optimizer_class(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, total_steps, tc.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type, enabled=tc.amp == "fp16")
    meta = {"model": config.model.name, "model_args": model_args, "task": task,
            "num_classes": train_set.num_classes, "config": config.to_dict(), "seed": tc.seed,
            "data": {"name": config.data.name, "train_split": config.data.train_split,
                     "train_size": len(train_set), "val_split": config.data.val_split,
                     "val_size": len(val_set), "train_cases": case_names(train_set),
                     "val_cases": case_names(val_set)},
            "versions": versions(), "class_weights": class_weights}
    if hasattr(train_set, "tokenizer"):  # event tokens: the training split's bins, reused by evaluate
        meta["data"]["tokenizer"] = train_set.tokenizer.to_dict()
    multitask = setup_multitask(model_args.get("tasks"), tc.task_weights, train_set)
    if multitask is not None:  # the training split's target standardisation travels with the weights
        meta["multitask"] = multitask.to_dict()
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(tc.amp)
    loss_fn = make_loss(tc.loss, task, class_weights).to(device)
    run = _Run(config=config, out_dir=out_dir, info=info, device=device, task=task,
               num_classes=train_set.num_classes, model=model, train_model=train_model, optimizer=optimizer,
               scheduler=scheduler, scaler=scaler, amp_dtype=amp_dtype, loss_fn=loss_fn,
               sampler=sampler,
               train_view=SeededTransformDataset(train_set, train_transform, tc.seed),
               val_loader=evaluation_loader(val_set, val_transform, task, tc.batch_size, info, tc.num_workers),
               steps_per_epoch=sampler.batches_per_epoch(), total_steps=total_steps,
               metric=selection_metric(tc.select_metric, task),
               log=RunLog(out_dir / "log.jsonl", info), meta=meta,
               counters={"step": 0, "epoch": 0, "batch_in_epoch": 0, "best": None, "best_step": None,
                         "bad_validations": 0, "last_val": None},
               multitask=multitask)
    if resume:
        _restore(run)
    return run


def _restore(run: _Run) -> None:
    """Load the last checkpoint's weights, optimizer, scheduler, scaler, RNG states and counters."""
    run.model.load_state_dict(load_weights(run.last_dir), strict=True)
    run.counters = restore_train_state(run.last_dir, run.optimizer, run.scheduler, run.scaler)
    run.log.load(run.counters["step"])
    saved = read_meta(run.last_dir).get("multitask")
    if run.multitask is not None and saved is not None:  # the standardisation the run started with
        run.multitask, run.meta["multitask"] = MultiTask.from_dict(saved), saved
    logger.info("resumed %s at step %d (epoch %d, batch %d)", run.out_dir, run.counters["step"],
                run.counters["epoch"], run.counters["batch_in_epoch"])


def _train(run: _Run, progress: bool) -> dict[str, Any]:
    """The loop: a step per batch, then logging, validation and the last checkpoint when they fall due."""
    tc, counters = run.config.train, run.counters
    bar = None
    if progress and run.info.is_main:
        bar = tqdm(total=run.total_steps, initial=counters["step"], desc="train", unit="step", dynamic_ncols=True)
    stop = counters["step"] >= run.total_steps
    running: list[float] = []
    started = time.time()
    while not stop:
        run.sampler.set_epoch(counters["epoch"], counters["batch_in_epoch"])
        run.train_view.set_epoch(counters["epoch"])
        # Its own generator, so that creating a loader mid-epoch does not consume the global RNG.
        loader = DataLoader(run.train_view, batch_sampler=run.sampler, num_workers=tc.num_workers,
                            generator=torch.Generator().manual_seed(tc.seed + counters["epoch"]),
                            collate_fn=functools.partial(micro_batches, parts=tc.accumulate))
        for batch in loader:
            running.append(_train_step(run, batch))
            step = counters["step"]
            if step % tc.log_every == 0 or step == run.total_steps:
                _log_loss(run, running, started, bar)
                running = []
            if step % tc.val_every == 0 or step == run.total_steps:
                stop = _validate(run, bar)
            stop = stop or step >= run.total_steps
            if step % tc.checkpoint_every == 0 or stop:
                _save_last(run)
            if bar is not None:
                bar.update(1)
            if stop:
                break
        if counters["batch_in_epoch"] >= run.steps_per_epoch:
            counters["epoch"] += 1
            counters["batch_in_epoch"] = 0
    if bar is not None:
        bar.close()
    return _finish(run)


def micro_batches(items: list[dict[str, Any]], parts: int = 1) -> list[dict[str, Any]]:
    """Collate one optimizer step's items into ``parts`` equal micro-batches (gradient accumulation).

    Items of different shapes (bags of different sizes) cannot be stacked: ValueError saying so."""
    if len(items) % parts:
        raise ValueError(f"{len(items)} samples per process cannot be split into train.accumulate={parts} equal "
                         "micro-batches; make train.batch_size a multiple of the number of processes")
    size = len(items) // parts
    try:
        return [default_collate(items[i:i + size]) for i in range(0, len(items), size)]
    except RuntimeError as error:
        raise ValueError(f"cannot batch samples of different shapes ({error}); bags of different sizes need "
                         "train.batch_size=1 (train.accumulate=K averages K of them per step)") from error


def _train_step(run: _Run, batch: list[dict[str, Any]]) -> float:
    """One optimizer step on the micro-batches of ``batch`` (their mean loss); returns the loss."""
    tc = run.config.train
    run.train_model.train()
    run.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for i, micro in enumerate(batch):
        last = i == len(batch) - 1
        # DDP averages gradients across processes once, on the step's last micro-batch.
        sync = contextlib.nullcontext() if last or not run.info.enabled else run.train_model.no_sync()
        with sync:
            loss = _micro_loss(run, micro) / len(batch)
            run.scaler.scale(loss).backward()
        total += loss.item()
    if tc.grad_clip:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), tc.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.scheduler.step()
    run.counters["step"] += 1
    run.counters["batch_in_epoch"] += 1
    return total


def _micro_loss(run: _Run, batch: dict[str, Any]) -> torch.Tensor:
    """The loss of one micro-batch; FloatingPointError when it is not finite."""
    device = run.device
    image, label = batch["image"].to(device), batch["label"].to(device)
    with torch.autocast(device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        output = run.train_model(image) if run.multitask is None else run.train_model(image, all_heads=True)
    heads = None
    if run.multitask is not None:
        heads, output = {k: v.float() for k, v in output.items() if k != "main"}, output["main"]
    loss = run.loss_fn(output.float(), label.float() if run.task in FLOAT_TARGET_TASKS else label)
    if heads is not None:
        loss = loss + run.multitask.loss(heads, batch["targets"].to(device))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {run.counters['step'] + 1}")
    return loss


def _log_loss(run: _Run, running: list[float], started: float, bar: tqdm | None) -> None:
    """Log the mean training loss since the last log row (averaged over ranks)."""
    counters = run.counters
    loss_value = mean_across_ranks(sum(running) / len(running), run.info)
    run.log.append({"step": counters["step"], "epoch": counters["epoch"], "train_loss": loss_value,
                    "lr": run.scheduler.get_last_lr()[0], "time": round(time.time() - started, 2)})
    if bar is not None:
        shown = {"loss": f"{loss_value:.4f}"}
        if counters["best"] is not None:
            shown["best " + run.metric] = f"{counters['best']:.4f}"
        bar.set_postfix(shown, refresh=False)


def _validate(run: _Run, bar: tqdm | None) -> bool:
    """Score the validation split, save the best checkpoint when it improved; True to stop early."""
    counters, step, tc = run.counters, run.counters["step"], run.config.train
    scores = run_validation(run.model, run.val_loader, run.task, run.num_classes, run.config, run.device)
    if run.metric not in scores:
        raise ValueError(f"train.select_metric {run.metric!r} is not among the validation metrics {sorted(scores)}")
    score = scores[run.metric]
    best = counters["best"]
    improved = best is None or (score > best if higher_is_better(run.metric) else score < best)
    counters["last_val"] = scores
    if improved:
        counters["best"], counters["best_step"], counters["bad_validations"] = score, step, 0
        if run.info.is_main:
            save_checkpoint(run.best_dir, run.model, {**run.meta, "step": step, "epoch": counters["epoch"],
                                                      "metrics": scores})
    else:
        counters["bad_validations"] += 1
    run.log.append({"step": step, "epoch": counters["epoch"], **{f"val_{k}": v for k, v in scores.items()},
                    "best": improved})
    if run.info.is_main:
        plot_curves(run.log.rows, run.out_dir / "curves.png")
    if bar is not None:
        bar.set_postfix(**{run.metric: f"{score:.4f}", "best": f"{counters['best']:.4f}"}, refresh=False)
        bar.write(validation_line(step, scores, run.metric, counters), file=bar.fp)
    elif run.info.is_main:
        logger.info(validation_line(step, scores, run.metric, counters))
    if tc.early_stopping and counters["bad_validations"] >= tc.early_stopping:
        logger.info("early stopping at step %d: %d validations without improvement", step,
                    counters["bad_validations"])
        return True
    return False


def validation_line(step: int, scores: dict[str, float], metric: str, counters: dict[str, Any]) -> str:
    """One line per validation: every summary metric (not the per-class ``_<k>`` ones) and the best so far,
    e.g. "step 100 val: accuracy 0.9000 balanced_accuracy 0.5000 auc 0.7100 f1 0.4737 | best auc 0.7100 at
    step 100" (a binary classifier that predicts the majority class shows balanced accuracy 0.5)."""
    shown = {k: v for k, v in scores.items() if not k.rpartition("_")[2].isdigit() or k == metric}
    values = " ".join(f"{k} {v:.4f}" for k, v in shown.items())
    return f"step {step} val: {values} | best {metric} {counters['best']:.4f} at step {counters['best_step']}"


def _save_last(run: _Run) -> None:
    """The resumable checkpoint: weights, optimizer, scheduler, scaler, RNG states and counters (rank 0)."""
    if run.info.is_main:
        counters = run.counters
        state = capture_train_state(run.optimizer, run.scheduler, run.scaler, counters)
        save_checkpoint(run.last_dir, run.model, {**run.meta, "step": counters["step"], "epoch": counters["epoch"],
                                                  "metrics": counters["last_val"]}, state)
    barrier(run.info)


def _finish(run: _Run) -> dict[str, Any]:
    """The summary every rank returns; rank 0 writes val_metrics.json and the final curves."""
    counters = run.counters
    summary = {"step": counters["step"], "epoch": counters["epoch"], "best_metric": run.metric,
               "best": counters["best"], "best_step": counters["best_step"], "val_metrics": counters["last_val"]}
    summary = broadcast_object(summary, run.info)
    if run.info.is_main:
        write_text_atomic(run.out_dir / "val_metrics.json", json.dumps(summary, indent=2))
        plot_curves(run.log.rows, run.out_dir / "curves.png")
    return summary
