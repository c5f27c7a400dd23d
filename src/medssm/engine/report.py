"""Evaluation reports (metrics.json, metrics.md, per_case.csv) and PNG plots (training curves, overlays).

Every file is written through ``files.atomic_path`` so a crash never leaves half a file. Plots use
matplotlib's object API with the Agg canvas: no display, no pyplot global state.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..conventions import check_spatial_dims
from .files import atomic_path, write_text_atomic

# One colour per class (class 0 = background stays transparent); cycles for more than 10 classes.
CLASS_COLOURS = np.array([
    (0.00, 0.00, 0.00), (0.90, 0.10, 0.10), (0.10, 0.75, 0.20), (0.15, 0.45, 0.95), (1.00, 0.80, 0.00),
    (0.85, 0.20, 0.85), (0.00, 0.85, 0.85), (1.00, 0.50, 0.00), (0.55, 0.35, 0.15), (0.60, 0.60, 1.00),
])
OVERLAY_ALPHA = 0.45


# ---- metrics files -----------------------------------------------------------------------------------

def _json_safe(value: Any) -> Any:
    """nan/inf are not JSON: write them as null (the Markdown table shows them as text)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (torch.Tensor, np.generic)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isfinite(value) and float(value).is_integer() and abs(value) < 1e9:
            return str(int(value))  # counts such as hd95_skipped
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_metrics(metrics: dict[str, float], out_dir: str | Path, title: str, info: dict[str, Any] | None = None,
                  per_case: list[dict[str, Any]] | None = None) -> list[Path]:
    """Write ``metrics.json``, ``metrics.md`` and (with ``per_case``) ``per_case.csv`` into ``out_dir``.

    metrics.json: ``{"title": ..., "info": {...}, "metrics": {...}}``; nan/inf become null.
    metrics.md: a ``# title`` line, the info as ``key: value`` lines, then a ``| metric | value |`` table.
    per_case.csv: one row per dict, columns in order of first appearance (missing cells left empty).
    ``info`` holds provenance such as checkpoint, dataset, split and seed. Returns the written paths.
    """
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict of name -> value, got {type(metrics).__name__}")
    out_dir = Path(out_dir)
    info = dict(info or {})
    payload = {"title": title, "info": _json_safe(info), "metrics": _json_safe(metrics)}
    json_path, md_path = out_dir / "metrics.json", out_dir / "metrics.md"
    write_text_atomic(json_path, json.dumps(payload, indent=2, allow_nan=False) + "\n")

    lines = [f"# {title}", ""]
    if info:
        lines += [f"- {key}: {_format(value)}" for key, value in info.items()] + [""]
    lines += ["| metric | value |", "| --- | --- |"]
    lines += [f"| {name} | {_format(value)} |" for name, value in metrics.items()]
    write_text_atomic(md_path, "\n".join(lines) + "\n")
    written = [json_path, md_path]

    if per_case is not None:
        if not all(isinstance(row, dict) for row in per_case):
            raise ValueError("per_case must be a list of dicts (one per case)")
        columns = list(dict.fromkeys(key for row in per_case for key in row))
        csv_path = out_dir / "per_case.csv"
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows({k: _json_safe(v) for k, v in row.items()} for row in per_case)
        written.append(csv_path)
    return written


# ---- training curves ---------------------------------------------------------------------------------

def _series(rows: list[dict[str, Any]], key: str, x_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if row.get(x_key) is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if math.isfinite(value):
            xs.append(float(row[x_key]))
            ys.append(float(value))
    return xs, ys


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def plot_curves(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Training log rows -> a PNG with 3 panels: loss, validation metric(s) and learning rate vs step.

    Rows are the training JSONL rows: ``step`` (or, if no row has one, ``epoch``) is the x axis; keys
    ending in ``loss`` go to the loss panel, other ``val_*`` keys to the metric panel (metrics outside
    [0, 1], e.g. hd95 or psnr, on a second y axis), ``lr`` to the last. A row may hold only some keys.
    """
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("rows must be a list of dicts (training log rows)")
    x_key = "step" if any("step" in r for r in rows) else "epoch"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    loss_keys = [k for k in keys if k.endswith("loss")]
    val_keys = [k for k in keys if k.startswith("val_") and k not in loss_keys]

    fig = Figure(figsize=(15, 4.2), layout="constrained")
    ax_loss, ax_val, ax_lr = fig.subplots(1, 3)

    for key in loss_keys:
        xs, ys = _series(rows, key, x_key)
        if xs:
            ax_loss.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=key)
    if loss_keys and all(y > 0 for k in loss_keys for y in _series(rows, k, x_key)[1]):
        ax_loss.set_yscale("log")
    ax_loss.set_title("loss")

    unit = [k for k in val_keys if all(0 <= y <= 1 for y in _series(rows, k, x_key)[1])]
    other = [k for k in val_keys if k not in unit]
    ax_other = ax_val.twinx() if other and unit else ax_val
    for ax, group, style in ((ax_val, unit, "-"), (ax_other, other, "--")):
        for key in group:
            xs, ys = _series(rows, key, x_key)
            if xs:
                ax.plot(xs, ys, style, marker="o", markersize=3, label=key)
    if ax_other is not ax_val:
        ax_other.set_ylabel(", ".join(other))
    handles = [h for ax in {ax_val, ax_other} for h in ax.get_legend_handles_labels()[0]]
    if handles:
        ax_val.legend(handles=handles, fontsize=8, loc="best")
    ax_val.set_title("validation")

    xs, ys = _series(rows, "lr", x_key)
    if xs:
        ax_lr.plot(xs, ys, color="tab:purple")
        if all(y > 0 for y in ys) and max(ys) / min(ys) > 100:
            ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate")

    for ax in (ax_loss, ax_val, ax_lr):
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
        if not ax.lines and not (ax is ax_val and ax_other.lines):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    if ax_loss.lines:
        ax_loss.legend(fontsize=8, loc="best")
    return _save(fig, path)


# ---- overlays ----------------------------------------------------------------------------------------

def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _items(x: Any) -> list[np.ndarray]:
    """A batch (N, ...) or a sequence of N per-example tensors/arrays (sizes may differ) -> N arrays."""
    if isinstance(x, (list, tuple)):
        return [_numpy(item) for item in x]
    return list(_numpy(x))


def _labels(x: np.ndarray, spatial: tuple[int, ...], what: str) -> np.ndarray:
    """(*spatial), (1, *spatial) labels or (K, *spatial) float probabilities -> (*spatial) int labels."""
    if x.shape == spatial:
        return np.rint(x).astype(np.int64)
    if x.ndim == len(spatial) + 1 and x.shape[1:] == spatial:
        if x.shape[0] == 1:
            return np.rint(x[0]).astype(np.int64)
        if np.issubdtype(x.dtype, np.floating):
            return x.argmax(0)
    raise ValueError(f"{what} must be labels ([1,] *spatial) or probabilities (K, *spatial) per example, with "
                     f"spatial {spatial} as in the image; got {x.shape}")


def _display(image: np.ndarray) -> np.ndarray:
    """(C, *spatial) -> grey (*spatial) or RGB (*spatial, 3) in [0, 1], robust to outliers."""
    a = image[:3] if image.shape[0] == 3 else image[:1]
    lo, hi = np.percentile(a, [1, 99]) if a.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    a = np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a, dtype=float)
    return np.moveaxis(a, 0, -1) if a.shape[0] == 3 else a[0]


def _rgba(labels: np.ndarray) -> np.ndarray:
    """(*spatial) int -> (*spatial, 4) colours, background transparent."""
    colours = CLASS_COLOURS[np.where(labels > 0, (labels - 1) % (len(CLASS_COLOURS) - 1) + 1, 0)]
    alpha = np.where(labels > 0, OVERLAY_ALPHA, 0.0)[..., None]
    return np.concatenate([colours, alpha], axis=-1)


def _slice_3d(target: np.ndarray) -> int:
    """Axial (last-axis) index with the most target foreground, else the middle slice."""
    counts = (target > 0).reshape(-1, target.shape[-1]).sum(0)
    return int(counts.argmax()) if counts.max() > 0 else target.shape[-1] // 2


def _contours(ax: Any, labels: np.ndarray) -> None:
    for c in np.unique(labels):
        if c > 0:
            colour = CLASS_COLOURS[(c - 1) % (len(CLASS_COLOURS) - 1) + 1]
            ax.contour((labels == c).astype(float), levels=[0.5], colors=[colour], linewidths=1.2)


def plot_overlays(images: Any, targets: Any, predictions: Any, path: str | Path, spatial_dims: int,
                  max_items: int = 8, names: Sequence[str] | None = None) -> Path:
    """A PNG grid, one row per example: image | ground truth | prediction.

    Args:
        images: (N, C, *spatial) tensor or array, or a list of N (C, *spatial) examples (sizes may differ);
            the first channel is shown in grey, or RGB when C = 3, scaled by its 1st-99th percentile.
        targets: labels (N, 1, *spatial) or (N, *spatial), or a list of per-example labels.
        predictions: labels like ``targets``, or probabilities (N, K, *spatial) (argmax is shown).
        spatial_dims: 1, 2 or 3. 3D shows the axial (last-axis) slice with the most target foreground (the
            middle slice if the target is empty). 1D draws the signal with the classes as coloured bands.
        max_items: show at most this many examples (the first ones).
        names: optional per-example titles (e.g. case ids).

    Classes are filled, semi-transparent, one colour per class; the prediction panel also outlines the
    ground truth so misses and false positives stand out.
    """
    check_spatial_dims(spatial_dims)
    imgs = [image.astype(np.float64) for image in _items(images)]
    tgts, preds = _items(targets), _items(predictions)
    if not imgs:
        raise ValueError("images is empty")
    if len(tgts) != len(imgs) or len(preds) != len(imgs):
        raise ValueError(f"images, targets and predictions must hold the same number of examples, got "
                         f"{len(imgs)}, {len(tgts)} and {len(preds)}")
    if names is not None and len(names) < len(imgs):
        raise ValueError(f"names must have one entry per example ({len(imgs)}), got {len(names)}")
    n = min(len(imgs), max_items)
    for i in range(n):
        if imgs[i].ndim != spatial_dims + 1:
            raise ValueError(f"images must be (N, C, *spatial) with {spatial_dims} spatial dims, got an example "
                             f"of shape {imgs[i].shape}")
        spatial = imgs[i].shape[1:]
        tgts[i], preds[i] = _labels(tgts[i], spatial, "targets"), _labels(preds[i], spatial, "predictions")

    width = 12 if spatial_dims == 1 else 9
    fig = Figure(figsize=(width, 2.2 * n + 0.4 if spatial_dims == 1 else 3 * n + 0.4), layout="constrained")
    axes = np.asarray(fig.subplots(n, 3, squeeze=False))
    for i in range(n):
        image, target, pred = imgs[i], tgts[i], preds[i]
        label = names[i] if names is not None else f"#{i}"
        if spatial_dims == 3:
            z = _slice_3d(target)
            image, target, pred = image[..., z], target[..., z], pred[..., z]
            label += f" (slice {z})"
        if spatial_dims == 1:
            _plot_1d_row(axes[i], image, target, pred)
        else:
            shown = _display(image)
            for ax in axes[i]:
                ax.imshow(shown, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            axes[i, 1].imshow(_rgba(target), interpolation="nearest")
            axes[i, 2].imshow(_rgba(pred), interpolation="nearest")
            _contours(axes[i, 2], target)
        axes[i, 0].set_ylabel(label, fontsize=9)
    for ax, title in zip(axes[0], ("image", "ground truth", "prediction (outline: ground truth)"), strict=True):
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _plot_1d_row(axes: np.ndarray, image: np.ndarray, target: np.ndarray, pred: np.ndarray) -> None:
    signal = image[0]
    length = signal.shape[0]
    lo, hi = float(signal.min()), float(signal.max())
    pad = 0.05 * (hi - lo) or 1.0
    extent = (0, length - 1 if length > 1 else 1, lo - pad, hi + pad)
    for ax, labels in zip(axes, (None, target, pred), strict=True):
        ax.plot(np.arange(length), signal, color="black", linewidth=0.8)
        if labels is not None:
            ax.imshow(_rgba(labels)[None], extent=extent, aspect="auto", interpolation="nearest", origin="lower")
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])


# ---- classification ---------------------------------------------------------------------------------

def plot_confusion(matrix: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """The (K, K) confusion matrix (rows true, columns predicted) as a PNG, counts in the cells."""
    matrix = np.asarray(matrix)
    fig = Figure(figsize=(1.2 + 0.6 * len(matrix), 1.0 + 0.6 * len(matrix)))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(int(count)), ha="center", va="center",
                color="white" if count > matrix.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", xticks=range(len(matrix)), yticks=range(len(matrix)))
    fig.tight_layout()
    return _save(fig, path)


def plot_roc(prob: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, path: str | Path) -> Path:
    """One-vs-rest ROC curves (one per class with both positive and negative cases) as a PNG, each labelled
    with its AUC (the trapezoidal area under the plotted curve)."""
    prob, target = np.asarray(prob, dtype=np.float64), np.asarray(target).astype(int).ravel()
    fig = Figure(figsize=(4.5, 4.2))
    ax = fig.add_subplot()
    for c in range(prob.shape[1]):
        positive = target == c
        if positive.all() or not positive.any():
            continue
        order = np.argsort(-prob[:, c], kind="stable")
        tpr = np.concatenate([[0.0], np.cumsum(positive[order]) / positive.sum()])
        fpr = np.concatenate([[0.0], np.cumsum(~positive[order]) / (~positive).sum()])
        area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
        ax.plot(fpr, tpr, label=f"class {c} (AUC {area:.3f})")
        if prob.shape[1] == 2:
            break  # binary: class 1's curve is class 0's mirrored
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def reliability_bins(positive: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
                     bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted P(class 1), observed fraction of class 1, cases) per non-empty bin of ``bins`` equal
    widths over [0, 1] (the last bin includes 1)."""
    positive = np.asarray(positive, dtype=np.float64).ravel()
    target = np.asarray(target).astype(np.float64).ravel()
    if positive.shape != target.shape:
        raise ValueError(f"positive and target must have one value per case, got {positive.shape} and {target.shape}")
    index = np.clip((positive * bins).astype(int), 0, bins - 1)
    return [(float(positive[index == b].mean()), float(target[index == b].mean()), int((index == b).sum()))
            for b in range(bins) if (index == b).any()]


def plot_reliability(positive: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, path: str | Path,
                     bins: int = 10) -> Path:
    """A reliability diagram (calibration) of a binary classifier as a PNG: observed fraction of class 1
    against mean predicted P(class 1) per probability bin (:func:`reliability_bins`), the diagonal of perfect
    calibration, and below it the histogram of the predicted probabilities."""
    rows = reliability_bins(positive, target, bins)
    fig = Figure(figsize=(4.5, 5.4))
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    ax.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label="model")
    ax.set(ylabel="observed fraction of class 1", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize="small")
    hist.hist(np.asarray(positive, dtype=np.float64).ravel(), bins=bins, range=(0, 1), color="tab:blue")
    hist.set(xlabel="predicted P(class 1)", ylabel="cases")
    fig.tight_layout()
    return _save(fig, path)
