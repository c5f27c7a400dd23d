"""Evaluate a checkpoint on a dataset split: metrics (JSON + Markdown + per-case CSV) and an overlay PNG.

The dataset, transforms and inference settings default to those saved in the checkpoint's config, so
``medssm evaluate --checkpoint RUN`` scores the run's own test split; overrides change any of them (e.g.
another data root, sliding-window size or flip test-time augmentation).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..conventions import DENSE_TASKS
from .classical import CLASSICAL_METHODS, build_classical
from .config import apply_overrides, config_from_dict
from .distributed import DistInfo
from .ensemble import CheckpointPaths, EnsemblePredictor, warn_fold_leakage
from .files import check_output
from .metrics import Metrics, confusion_matrix, per_class_classification
from .report import plot_confusion, plot_overlays, plot_reliability, plot_roc, write_metrics
from .restoration_report import restoration_row, write_case_files
from .setup import build_split, evaluation_loader, pick_device, roi_size
from .tasks import SINGLE_LABEL_TASKS

logger = logging.getLogger(__name__)


def evaluate(checkpoint: CheckpointPaths | None, out_dir: str | Path, split: str | None = None,
             overrides: list[str] | None = None, overwrite: bool = False, max_overlays: int = 8,
             device: str = "auto", progress: bool = False, method: str | None = None,
             config: str | Path | None = None, all_images: bool = False) -> dict[str, float]:
    """Score ``checkpoint`` on ``split`` (default: the config's test split) and write the report to
    ``out_dir``: metrics.json, metrics.md, per_case.csv, predictions.png (segmentation overlays), confusion.png
    and roc.png (classification, mil and events, whose metrics also get per-class values),
    reliability.png (binary ones: calibration). Returns the metrics. ``device``:
    auto, cpu, cuda or cuda:<index>; ``progress``: a progress bar over the cases. Several checkpoints (or a
    cross-validation folder) are scored as one ensemble, the mean of their probabilities
    (:class:`~medssm.engine.ensemble.EnsemblePredictor`), with the first one's config.

    Restoration also writes predictions/<case>.png and side_by_side/<case>.png (the first ``max_overlays``
    cases, every case with ``all_images``), and per_case.csv gets the noisy input's scores and the seconds
    (:mod:`medssm.engine.restoration_report`). A classical method (``method``, e.g. "bm3d": see
    :mod:`medssm.engine.classical`) needs no checkpoint: give ``checkpoint=None`` and the YAML ``config``."""
    out_dir = Path(out_dir)
    for name in ("metrics.json", "metrics.md", "per_case.csv", "predictions.png", "confusion.png", "roc.png",
                 "reliability.png", "predictions", "side_by_side"):
        check_output(out_dir / name, overwrite, "report file")
    if checkpoint is None:
        device = torch.device("cpu")
        classical, classical_meta = _classical(method, config, overrides or [])
        predictor = EnsemblePredictor([classical], [classical_meta], [str(method)])
    else:
        device = pick_device(device)
        predictor = EnsemblePredictor.load(checkpoint, device)
    meta, checkpoint_name = predictor.meta, predictor.name
    config = config_from_dict(apply_overrides(meta["config"], overrides or []), f"{predictor.names[0]} config")
    split = split or config.data.test_split
    warn_fold_leakage(predictor.metas, config, split)
    if "tokenizer" in meta.get("data", {}):  # event tokens: the bins fitted on the run's training split
        config.data.args.setdefault("tokenizer", meta["data"]["tokenizer"])
    dataset, transform = build_split(config, split, train=False)
    task, num_classes = meta["task"], meta["num_classes"] or dataset.num_classes
    if dataset.task != task:
        raise ValueError(f"checkpoint {checkpoint_name} was trained for {task} but the {split} split is {dataset.task}")
    loader = evaluation_loader(dataset, transform, task, config.train.batch_size, DistInfo(), 0)
    dense = task in DENSE_TASKS
    total = Metrics(task, num_classes)
    per_case: list[dict[str, Any]] = []
    examples: dict[str, list[torch.Tensor]] = {"images": [], "targets": [], "predictions": []}
    names: list[str] = []
    vectors: dict[str, list] = {"prob": [], "label": [], "names": []}  # classification: per case
    inf = config.inference
    infer_seconds = 0.0  # the model's inference alone (sliding windows, TTA), without loading or metrics
    roi = roi_size(config, task) if checkpoint is not None else None  # a classical method sees the whole image
    for index, batch in enumerate(tqdm(loader, desc="evaluate", unit="batch", disable=not progress,
                                       dynamic_ncols=True)):
        started = time.perf_counter()
        output = predictor(batch["image"].to(device), task, roi_size=roi, overlap=inf.overlap,
                           sw_batch_size=inf.sw_batch_size, tta_flips=inf.tta, mode=inf.mode).float().cpu()
        seconds = time.perf_counter() - started
        infer_seconds += seconds
        fov = batch.get("fov")
        # Volumes carry their voxel size: HD95 in world units (mm) rather than voxels.
        spacing = batch["spacing"][0].tolist() if dense and "spacing" in batch else None
        if not dense:
            total.update(output, batch["label"], fov=fov)
            vectors["prob"].append(output)
            vectors["label"].append(batch["label"])
            vectors["names"] += list(batch.get("name", [f"case_{len(vectors['names']) + i:04d}"
                                                       for i in range(len(output))]))
            continue
        # One case per batch: its own row, then folded into the total (HD95 is computed once per case).
        case = Metrics(task, num_classes)
        case.update(output, batch["label"], fov=fov, spacing=spacing)
        total.extend(case)
        name = batch["name"][0] if "name" in batch else f"case_{index:04d}"
        if task == "restoration":
            row = restoration_row(batch["image"], output, batch["label"], seconds, scores=case.compute())
            per_case.append({"case": name, **row})
            write_case_files(dataset, name, batch["image"][0], output[0], batch["label"][0], out_dir,
                             mosaic=all_images or index < max_overlays)
            continue
        per_case.append({"case": name, **case.compute()})
        if len(examples["images"]) < max_overlays:
            prediction = output.argmax(1, keepdim=True) if task == "segmentation" else output
            examples["images"].append(batch["image"][0])
            examples["targets"].append(batch["label"][0])
            examples["predictions"].append(prediction[0])
            names.append(name)
    metrics = total.compute()
    if "multitask" in meta and len(predictor.models) == 1:  # event models' extra heads: MAE in their units
        from .multitask import MultiTask, regression_errors

        metrics.update(regression_errors(predictor.models[0], dataset, MultiTask.from_dict(meta["multitask"]),
                                         config.train.batch_size, device))
    if task in SINGLE_LABEL_TASKS:
        prob, label = torch.cat(vectors["prob"]), torch.cat(vectors["label"]).long().flatten()
        metrics.update(per_class_classification(prob, label))
        per_case = [{"case": name, "label": int(y), "predicted": int(p.argmax()),
                     **{f"prob_{k}": float(v) for k, v in enumerate(p)}}
                    for name, y, p in zip(vectors["names"], label, prob, strict=True)]
        plot_confusion(confusion_matrix(prob, label), out_dir / "confusion.png")
        plot_roc(prob, label, out_dir / "roc.png")
        if num_classes == 2:
            plot_reliability(prob[:, 1], label, out_dir / "reliability.png")
    info = {"checkpoint": checkpoint_name, "model": meta["model"], "dataset": config.data.name, "split": split,
            "cases": len(dataset), "seed": meta.get("seed"), "trained_steps": meta.get("step"),
            "tta": inf.tta, "roi_size": roi, "device": str(device),
            "inference_seconds_per_case": infer_seconds / max(len(dataset), 1)}
    write_metrics(metrics, out_dir, title=f"{meta['model']} on {config.data.name} ({split})", info=info,
                  per_case=per_case or None)
    if examples["images"] and task == "segmentation":
        plot_overlays(examples["images"], examples["targets"], examples["predictions"], out_dir / "predictions.png",
                      spatial_dims=dataset.spatial_dims, max_items=max_overlays, names=names)
    logger.info("evaluated %s on %s/%s: %s", checkpoint_name, config.data.name, split, metrics)
    return metrics


def _classical(method: str | None, config: str | Path | None, overrides: list[str]
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A classical method and the metadata a checkpoint would give: its arguments are the (overridden)
    config's ``model.args`` when ``model.name`` is the method, else its defaults."""
    if method not in CLASSICAL_METHODS or config is None:
        raise ValueError(f"without a checkpoint, evaluate needs a classical method (one of "
                         f"{', '.join(CLASSICAL_METHODS)}) and a config; got method={method!r}, config={config!r}")
    raw = apply_overrides(yaml.safe_load(Path(config).read_text()) or {}, overrides)
    section = raw.get("model") or {}
    args = section.get("args") if section.get("name") == method else None
    model = build_classical(method, args)
    raw["model"] = {"name": method, "args": args or {}}
    return model, {"config": raw, "task": "restoration", "num_classes": None, "model": method}
