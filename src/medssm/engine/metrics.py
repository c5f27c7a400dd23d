"""Evaluation metrics for the five tasks, accumulated over batches and identical on every rank.

The arithmetic is MONAI's (DiceMetric's ``compute_dice``, HausdorffDistanceMetric's
``compute_hausdorff_distance`` at the 95th percentile, ROCAUCMetric's ``compute_roc_auc``, the confusion
matrix helpers, PSNRMetric, SSIMMetric's ``compute_ssim_and_cs``); this file decides what is accumulated,
how empty classes are treated and how the per-sample values are reduced.

Tasks and what ``Metrics.update(output, target, fov)`` takes (B = batch, K = classes, C = channels):

- ``segmentation``: output probabilities (B, K, *spatial), target class indices (B, 1, *spatial) int.
  Keys: ``dice`` (foreground classes 1..K-1), ``dice_<k>``, ``auc`` and ``auc_<k>`` (each foreground
  class's probability against all other pixels, pooled over every pixel of every image inside the field of
  view, the convention of retinal-vessel papers; ``auc`` is the mean over the classes), and with
  ``hd95=True`` ``hd95``, ``hd95_<k>`` (in ``spacing`` units) and ``hd95_skipped``. The pooled AUC is
  computed from histograms of the probabilities in ``AUC_BINS`` bins (constant memory for any number of
  pixels; pixels in one bin count as ties), within 1/AUC_BINS of the exact value.
- ``classification`` and ``events`` (coded event sequences, scored the same way): output probabilities
  (B, K), target (B,) (or (B, 1)) int. Keys: ``accuracy``, ``balanced_accuracy``, ``auc`` (AUROC: plain for
  K = 2, one-vs-rest macro otherwise), ``f1`` (macro), and for K = 2 ``auprc`` (average precision of class 1)
  and ``brier`` (mean squared error of P(class 1); lower is better).
- ``mil``: as classification, one row per bag.
- ``multilabel``: output probabilities (B, K), target (B, K) 0/1. Keys: ``auc`` (mean over labels),
  ``accuracy`` (element-wise, probability >= 0.5 counts as positive), ``f1`` (macro over labels).
- ``restoration``: output image (B, C, *spatial), target image of the same shape. Keys: ``psnr``,
  ``mae`` (both per image, then the mean), ``ssim`` (2D and 3D only; 1D signals get no ``ssim``).

Empty classes (segmentation), per image and class:

- Dice: a class absent from the target is left out (MONAI's ``ignore_empty=True``), so an image's dice is
  the mean over the foreground classes present in its target, and ``dice`` the mean over images that
  have any. A false positive on an image without that class therefore does not lower ``dice``.
- HD95 is measured only where the class is present in both prediction and target. Where it is present in
  exactly one of them the distance is undefined (MONAI returns inf/nan); such pairs are left out of the
  means and counted in ``hd95_skipped``, so read ``hd95`` together with that count. Absent from both:
  nothing to measure, not counted.
- A mean over nothing (e.g. ``dice_2`` when class 2 never occurs) is reported as nan.

Averages follow scikit-learn's conventions: balanced accuracy is the mean recall over the classes present
in the targets; macro F1 is the mean over the classes present in targets or predictions; macro AUC skips
classes (labels) whose targets are all one value.

Field of view: pixels where ``fov`` is 0 count as background in prediction and target (segmentation),
and are left out of PSNR, MAE and SSIM (restoration; SSIM averages its map over the fov pixels).

Distributed: ``compute()`` gathers every rank's per-sample values (``all_gather_object``) so all ranks
report the same numbers. Samples duplicated by a padding ``DistributedSampler`` are counted twice; use a
sampler that does not pad for exact numbers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from monai.metrics import (
    PSNRMetric,
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_roc_auc,
    get_confusion_matrix,
)
from monai.metrics.regression import compute_ssim_and_cs

from .tasks import ENGINE_TASKS, SINGLE_LABEL_TASKS, check_supported

# The tasks Metrics and probabilities implement (conventions.TASKS also names tasks still to come).
METRIC_TASKS = ENGINE_TASKS

PRIMARY_METRIC = {"segmentation": "dice", "classification": "auc", "multilabel": "auc", "restoration": "psnr",
                  "mil": "auc", "events": "auc"}

# Every key Metrics.compute() can return, without the per-class "_<k>" suffix (see higher_is_better).
HIGHER_IS_BETTER = {
    "dice": True,
    "hd95": False,
    "hd95_skipped": False,
    "accuracy": True,
    "balanced_accuracy": True,
    "recall": True,
    "precision": True,
    "auc": True,
    "f1": True,
    "psnr": True,
    "ssim": True,
    "mae": False,
    "auprc": True,
    "brier": False,
}

AUC_BINS = 1 << 16  # probability bins of the pooled segmentation AUC
SSIM_WINDOW = 11  # MONAI's (and the SSIM paper's) Gaussian window; shrunk for smaller images.


def selection_metric(name: str, task: str) -> str:
    """The validation metric that selects the best checkpoint: ``PRIMARY_METRIC[task]`` for "auto", else
    ``name`` when it is a known metric (see :func:`higher_is_better`; e.g. balanced_accuracy, dice_2, hd95)."""
    if name == "auto":
        return PRIMARY_METRIC[task]
    higher_is_better(name)  # raises ValueError naming the known metrics
    return name


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better; accepts ``dice_3``, ``val_dice``, ``test_hd95_1``."""
    for candidate in (name, name.split("_", 1)[-1]):  # the second drops a "val_"/"test_" prefix
        head, _, tail = candidate.rpartition("_")
        base = head if head and tail.isdigit() else candidate  # "dice_3" -> "dice"
        if base in HIGHER_IS_BETTER:
            return HIGHER_IS_BETTER[base]
    raise ValueError(f"unknown metric name {name!r}; known: {sorted(HIGHER_IS_BETTER)}")


def probabilities(task: str, logits: torch.Tensor) -> torch.Tensor:
    """Network output -> what ``Metrics.update`` takes.

    Softmax over the channel dim (dim 1) for segmentation (B, K, *spatial) and classification (B, K);
    sigmoid for multilabel (B, K); identity for restoration (the output is the restored image).
    A single channel (K = 1) for segmentation/classification is a binary model's foreground logit: sigmoid
    (a softmax over one channel would be 1 everywhere).
    """
    check_supported(task, METRIC_TASKS, "probabilities")
    if task in ("segmentation", *SINGLE_LABEL_TASKS):
        if logits.ndim < 2:
            raise ValueError(f"logits must be (B, K, ...) for {task}, got shape {tuple(logits.shape)}")
        if logits.shape[1] == 1:
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), dim=1)
    if task == "multilabel":
        return torch.sigmoid(logits.float())
    return logits


class Metrics:
    """Accumulate per-sample values over batches; ``compute()`` reduces them (see the module docstring).

    Args:
        task: one of ``METRIC_TASKS``.
        num_classes: K, the number of output channels (classes incl. background for segmentation, labels
            for multilabel); for restoration the number of image channels C, or 0 to skip the check.
        hd95: also compute the 95th-percentile Hausdorff distance (segmentation; costs a distance transform
            per image and class).
        spacing: voxel size per spatial axis (or one float for all) for hd95; None means 1.
        data_range: the intensity range of restoration images (PSNR's peak value and SSIM's L).
    """

    def __init__(self, task: str, num_classes: int, hd95: bool = True,
                 spacing: float | Sequence[float] | None = None, data_range: float = 1.0) -> None:
        self.task = check_supported(task, METRIC_TASKS, "Metrics")
        if task in ("segmentation", *SINGLE_LABEL_TASKS) and num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for {task} (background/negative class included), "
                             f"got {num_classes}")
        if task == "multilabel" and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for multilabel, got {num_classes}")
        if data_range <= 0:
            raise ValueError(f"data_range must be > 0, got {data_range}")
        self.num_classes = num_classes
        self.hd95 = hd95
        self.spacing = spacing
        self.data_range = float(data_range)
        self._values: dict[str, list[torch.Tensor]] = {}

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._values = {}

    def extend(self, other: Metrics) -> None:
        """Add everything ``other`` accumulated (same task and classes), without recomputing it: e.g. the
        per-case Metrics of an evaluation folded into the total."""
        if (other.task, other.num_classes) != (self.task, self.num_classes):
            raise ValueError(f"cannot extend {self.task} metrics with {self.num_classes} classes by {other.task} "
                             f"metrics with {other.num_classes} classes")
        for key, values in other._values.items():
            self._values.setdefault(key, []).extend(values)

    def _add(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            self._values.setdefault(key, []).append(value.detach().cpu())

    # ---- update -------------------------------------------------------------------------------------

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor, fov: torch.Tensor | None = None,
               spacing: float | Sequence[float] | None = None) -> None:
        """Add one batch. ``output`` is ``probabilities(task, logits)`` (restoration: the image).

        ``fov`` (B, 1, *spatial), nonzero inside the field of view, applies to dense tasks only.
        ``spacing`` overrides the constructor's for this batch (e.g. per-volume voxel sizes).
        """
        if not isinstance(output, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise ValueError("output and target must be torch tensors")
        if self.task == "segmentation":
            self._update_segmentation(output, target, fov, self.spacing if spacing is None else spacing)
        elif self.task == "restoration":
            self._update_restoration(output, target, fov)
        else:
            if fov is not None:
                raise ValueError(f"fov applies to dense tasks only, not {self.task}")
            self._update_vector(output, target)

    def _check_fov(self, fov: torch.Tensor | None, output: torch.Tensor) -> torch.Tensor | None:
        if fov is None:
            return None
        expected = (output.shape[0], 1, *output.shape[2:])
        if tuple(fov.shape) != expected:
            raise ValueError(f"fov must have shape (B, 1, *spatial) = {expected}, got {tuple(fov.shape)}")
        return fov.to(output.device) != 0

    def _update_segmentation(self, output: torch.Tensor, target: torch.Tensor, fov: torch.Tensor | None,
                             spacing: float | Sequence[float] | None) -> None:
        k = self.num_classes
        if output.ndim < 3 or output.shape[1] != k:
            raise ValueError(f"output must be probabilities (B, {k}, *spatial), got {tuple(output.shape)}")
        expected = (output.shape[0], 1, *output.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f"target must be class indices of shape (B, 1, *spatial) = {expected}, "
                             f"got {tuple(target.shape)}")
        if target.is_floating_point() or target.is_complex():
            raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
        if target.numel() and (target.min() < 0 or target.max() >= k):
            raise ValueError(f"target class indices must lie in [0, {k}), got [{target.min()}, {target.max()}]")
        if spacing is not None and not isinstance(spacing, (int, float)) and len(spacing) != output.ndim - 2:
            raise ValueError(f"spacing must be one number or one per spatial axis ({output.ndim - 2}), "
                             f"got {spacing}")
        pred = output.argmax(dim=1, keepdim=True)
        target = target.to(pred.device)
        mask = self._check_fov(fov, output)
        if mask is not None:
            pred = pred * mask
            target = target * mask
        pred_1h = _one_hot(pred, k)
        target_1h = _one_hot(target, k)
        self._add_auc_histograms(output, target_1h, mask)
        dice = compute_dice(pred_1h, target_1h, include_background=False, ignore_empty=True)  # (B, K-1), nan = absent
        self._add(dice=dice)
        if self.hd95:
            in_pred = pred_1h[:, 1:].flatten(2).any(-1)
            in_target = target_1h[:, 1:].flatten(2).any(-1)
            both = in_pred & in_target
            hd = torch.full(both.shape, math.nan)
            if both.any():
                with warnings.catch_warnings():
                    # MONAI warns about (and returns inf/nan for) empty classes, which we mask out below.
                    warnings.filterwarnings("ignore", message=".*is all 0.*")
                    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
                    hd = compute_hausdorff_distance(pred_1h, target_1h, include_background=False, percentile=95,
                                                    spacing=spacing).float().cpu()
                hd = torch.where(both.cpu(), hd, torch.full_like(hd, math.nan))
            self._add(hd95=hd, hd95_skipped=(in_pred ^ in_target))

    def _add_auc_histograms(self, output: torch.Tensor, target_1h: torch.Tensor, mask: torch.Tensor | None) -> None:
        """Add each foreground class's probability histograms (positives, negatives) over the fov pixels:
        kept as one running (K-1, 2, AUC_BINS) sum, not per image."""
        k = self.num_classes
        inside = torch.ones_like(target_1h[:, :1], dtype=torch.bool) if mask is None else mask
        inside = inside.expand_as(target_1h[:, 1:])
        bins = (output[:, 1:].float() * AUC_BINS).long().clamp_(0, AUC_BINS - 1)
        positive = target_1h[:, 1:].bool()
        hist = torch.zeros(k - 1, 2, AUC_BINS, dtype=torch.float64)
        for c in range(k - 1):
            for j, selected in enumerate((positive[:, c] & inside[:, c], ~positive[:, c] & inside[:, c])):
                hist[c, j] = torch.bincount(bins[:, c][selected], minlength=AUC_BINS).double().cpu()
        parts = self._values.setdefault("auc_hist", [])
        if parts:
            parts[0] = parts[0] + hist[None]
        else:
            parts.append(hist[None])

    def _update_vector(self, output: torch.Tensor, target: torch.Tensor) -> None:
        k = self.num_classes
        if output.ndim != 2 or output.shape[1] != k:
            raise ValueError(f"output must be probabilities (B, {k}) for {self.task}, got {tuple(output.shape)}")
        b = output.shape[0]
        if self.task in SINGLE_LABEL_TASKS:
            if tuple(target.shape) == (b, 1):
                target = target[:, 0]
            if tuple(target.shape) != (b,):
                raise ValueError(f"target must be class indices of shape (B,) = ({b},), got {tuple(target.shape)}")
            if target.is_floating_point():
                raise ValueError(f"target must hold integer class indices, got dtype {target.dtype}")
            if b and (target.min() < 0 or target.max() >= k):
                raise ValueError(f"target class indices must lie in [0, {k}), got [{target.min()}, {target.max()}]")
        else:
            if tuple(target.shape) != (b, k):
                raise ValueError(f"target must be 0/1 labels of shape (B, K) = ({b}, {k}), got {tuple(target.shape)}")
        self._add(prob=output.float(), target=target)

    def _update_restoration(self, output: torch.Tensor, target: torch.Tensor, fov: torch.Tensor | None) -> None:
        if output.ndim < 3 or output.ndim > 5:
            raise ValueError(f"output must be an image (B, C, *spatial) with 1-3 spatial dims, "
                             f"got {tuple(output.shape)}")
        if output.shape != target.shape:
            raise ValueError(f"output and target must have the same shape, got {tuple(output.shape)} and "
                             f"{tuple(target.shape)}")
        if self.num_classes and output.shape[1] != self.num_classes:
            raise ValueError(f"output must have {self.num_classes} channels, got {output.shape[1]}")
        output = output.float()
        target = target.to(output.device).float()
        mask = self._check_fov(fov, output)
        spatial_dims = output.ndim - 2
        if mask is None:
            mae = (output - target).abs().flatten(1).mean(1)
            psnr = PSNRMetric(max_val=self.data_range, reduction="none")(output, target)[:, 0]
        else:
            weight = mask.expand_as(output).flatten(1).float()
            count = weight.sum(1)  # 0 for an image with no fov pixel -> nan below
            mae = ((output - target).abs().flatten(1) * weight).sum(1) / count
            mse = ((output - target).square().flatten(1) * weight).sum(1) / count
            psnr = 20 * math.log10(self.data_range) - 10 * torch.log10(mse)  # PSNRMetric's formula, masked
        self._add(psnr=psnr, mae=mae)
        if spatial_dims >= 2:
            self._add(ssim=self._ssim(output, target, mask))

    def _ssim(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Per-image SSIM (B,): MONAI's SSIM map averaged over channels and (fov) pixels."""
        spatial = output.shape[2:]
        win = min(SSIM_WINDOW, min(spatial))
        win -= 1 - win % 2  # odd, so the window has a centre pixel
        dims = len(spatial)
        ssim_map, _ = compute_ssim_and_cs(output, target, spatial_dims=dims, kernel_size=[win] * dims,
                                          kernel_sigma=[1.5] * dims, data_range=self.data_range)
        if mask is None:
            return ssim_map.flatten(1).mean(1)
        # The map covers only windows fully inside the image ("valid" convolution): crop the fov to match.
        r = (win - 1) // 2
        crop = (slice(None), slice(None), *(slice(r, s - r) for s in spatial))
        weight = mask[crop].expand_as(ssim_map).flatten(1).float()
        return (ssim_map.flatten(1) * weight).sum(1) / weight.sum(1)

    # ---- compute ------------------------------------------------------------------------------------

    def _gathered(self) -> dict[str, torch.Tensor]:
        """Per-sample values of all ranks, concatenated in rank order."""
        local = {key: torch.cat(parts) for key, parts in self._values.items()}
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return local
        parts: list[dict[str, torch.Tensor] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        keys = sorted({key for part in parts if part for key in part})
        return {key: torch.cat([part[key] for part in parts if part and key in part]) for key in keys}

    def compute(self) -> dict[str, float]:
        """Reduce everything seen so far (on all ranks) to ``{name: value}``. Collective when distributed."""
        values = self._gathered()
        if not values:
            raise RuntimeError("no samples: call update() before compute()")
        if self.task == "segmentation":
            return _segmentation(values)
        if self.task in SINGLE_LABEL_TASKS:
            return _classification(values["prob"], values["target"].long())
        if self.task == "multilabel":
            return _multilabel(values["prob"], values["target"].float())
        return {key: _mean(values[key]) for key in ("psnr", "ssim", "mae") if key in values}


def _one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1, *spatial) int -> (B, K, *spatial) float one-hot."""
    return F.one_hot(labels[:, 0].long(), k).movedim(-1, 1).float()


def _mean(x: torch.Tensor) -> float:
    """Mean ignoring nan; nan when there is nothing to average."""
    x = x.double().flatten()
    return float(torch.nanmean(x)) if x.numel() else math.nan


def _per_image_then_mean(per_class: torch.Tensor) -> float:
    """(N, K-1) with nan for 'not applicable' -> mean over images of each image's mean over its classes."""
    per_image = torch.nanmean(per_class.double(), dim=1) if per_class.numel() else per_class.double()
    return _mean(per_image)


def _histogram_auc(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """ROC AUC from score histograms over the same ascending bins: P(score+ > score-) + P(tie) / 2."""
    n_pos, n_neg = float(positives.sum()), float(negatives.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    below = torch.cumsum(negatives, 0) - negatives  # negatives in lower bins
    return float((positives * (below + 0.5 * negatives)).sum()) / (n_pos * n_neg)


def _segmentation(values: dict[str, torch.Tensor]) -> dict[str, float]:
    dice = values["dice"]
    out = {"dice": _per_image_then_mean(dice)}
    out.update({f"dice_{c + 1}": _mean(dice[:, c]) for c in range(dice.shape[1])})
    if "auc_hist" in values:
        hist = values["auc_hist"].sum(0)  # (K-1, 2, bins), summed over ranks and folded metrics
        aucs = [_histogram_auc(hist[c, 0], hist[c, 1]) for c in range(hist.shape[0])]
        out["auc"] = _mean(torch.tensor(aucs, dtype=torch.float64))
        out.update({f"auc_{c + 1}": a for c, a in enumerate(aucs)})
    if "hd95" in values:
        hd = values["hd95"]
        out["hd95"] = _per_image_then_mean(hd)
        out.update({f"hd95_{c + 1}": _mean(hd[:, c]) for c in range(hd.shape[1])})
        out["hd95_skipped"] = float(values["hd95_skipped"].sum())
    return out


def _confusion_means(pred_1h: torch.Tensor, target_1h: torch.Tensor) -> tuple[float, float]:
    """(N, K) one-hot/0-1 -> (mean recall over classes with positives, macro F1 over classes seen)."""
    cm = get_confusion_matrix(pred_1h.float(), target_1h.float(), include_background=True).sum(0)  # (K, 4)
    recall = compute_confusion_matrix_metric("sensitivity", cm)  # nan where the class has no positives
    f1 = compute_confusion_matrix_metric("f1 score", cm)  # nan where neither target nor prediction has it
    return _mean(recall), _mean(f1)


def _auc(prob: torch.Tensor, target_1h: torch.Tensor) -> float:
    """Mean one-vs-rest ROC AUC over columns; columns whose targets are all one value are skipped."""
    usable = [c for c in range(prob.shape[1]) if 0 < int(target_1h[:, c].sum()) < target_1h.shape[0]]
    if not usable:
        return math.nan
    aucs = compute_roc_auc(prob[:, usable], target_1h[:, usable], average="none")
    return _mean(torch.as_tensor(aucs))


def _classification(prob: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    k = prob.shape[1]
    pred = prob.argmax(1)
    target_1h = F.one_hot(target, k)
    balanced, f1 = _confusion_means(F.one_hot(pred, k), target_1h)
    # Binary: the AUC of P(class 1); it equals the macro over both columns, said plainly.
    auc = _auc(prob[:, 1:], target_1h[:, 1:]) if k == 2 else _auc(prob, target_1h)
    out = {"accuracy": _mean((pred == target).float()), "balanced_accuracy": balanced, "auc": auc, "f1": f1}
    if k == 2:
        out.update(_binary_extras(prob[:, 1], target))
    return out


def _binary_extras(positive: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Binary only: ``auprc`` (average precision, scikit-learn's step-wise area under the precision-recall
    curve; nan without a positive case) and ``brier`` (mean squared error of P(class 1), a calibration score)."""
    from sklearn.metrics import average_precision_score

    y, p = target.cpu().numpy(), positive.double().cpu().numpy()
    auprc = float(average_precision_score(y, p)) if 0 < y.sum() else math.nan
    return {"auprc": auprc, "brier": float(((p - y) ** 2).mean())}


def _multilabel(prob: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    pred = (prob >= 0.5).float()
    _, f1 = _confusion_means(pred, target)
    return {"auc": _auc(prob, target), "accuracy": _mean((pred == target).float()), "f1": f1}


def per_class_classification(prob: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Per-class values of a single-label classification, for reports: ``support_<k>`` (cases of class k),
    ``recall_<k>``, ``precision_<k>``, ``f1_<k>`` and ``auc_<k>`` (class k against the rest), from
    probabilities (N, K) and class indices (N,); nan where a value is undefined (no case or no prediction)."""
    k = prob.shape[1]
    target = target.long().flatten()
    pred_1h, target_1h = F.one_hot(prob.argmax(1), k).float(), F.one_hot(target, k).float()
    cm = get_confusion_matrix(pred_1h, target_1h, include_background=True).sum(0)  # (K, 4): tp fp tn fn
    out: dict[str, float] = {}
    for c in range(k):
        out[f"support_{c}"] = float(target_1h[:, c].sum())
        for name, key in (("recall", "sensitivity"), ("precision", "precision"), ("f1", "f1 score")):
            out[f"{name}_{c}"] = float(compute_confusion_matrix_metric(key, cm[c:c + 1])[0])
        out[f"auc_{c}"] = _auc(prob[:, c:c + 1], target_1h[:, c:c + 1])
    return out


def confusion_matrix(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class, from probabilities (N, K) and indices (N,)."""
    k = prob.shape[1]
    index = target.long().flatten() * k + prob.argmax(1)
    return torch.bincount(index, minlength=k * k).reshape(k, k)
