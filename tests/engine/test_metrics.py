"""Metrics against values worked out by hand on small examples; the distributed gather with 2 gloo ranks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from medssm.engine.metrics import HIGHER_IS_BETTER, PRIMARY_METRIC, Metrics, higher_is_better, probabilities


def as_probs(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1, *spatial) class indices -> (B, K, *spatial) one-hot 'probabilities'."""
    return F.one_hot(labels[:, 0], k).movedim(-1, 1).float()


def seg(k: int, pred: torch.Tensor, target: torch.Tensor, fov: torch.Tensor | None = None, **kwargs) -> dict:
    m = Metrics("segmentation", k, **kwargs)
    m.update(as_probs(pred, k), target, fov)
    return m.compute()


def square(shape=(12, 12), rows=slice(3, 7), cols=slice(2, 6), value=1) -> torch.Tensor:
    t = torch.zeros(1, 1, *shape, dtype=torch.long)
    t[0, 0, rows, cols] = value
    return t


def rank_auc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(score of a positive > score of a negative), ties count 1/2."""
    pos, neg = scores[positive.bool()], scores[~positive.bool()]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


# ---- segmentation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(40,), (12, 12), (9, 10, 11)])
def test_perfect_prediction_gives_dice_one_and_hd95_zero(shape):
    target = torch.zeros(2, 1, *shape, dtype=torch.long)
    target[:, :, 2:5] = 1
    target[1, :, 6:8] = 2
    out = seg(3, target, target)
    assert out["dice"] == 1.0 and out["dice_1"] == 1.0 and out["dice_2"] == 1.0
    assert out["hd95"] == 0.0 and out["hd95_skipped"] == 0


def test_disjoint_prediction_gives_dice_zero():
    out = seg(2, square(cols=slice(7, 11)), square(cols=slice(1, 5)), hd95=False)
    assert {k: v for k, v in out.items() if k.startswith("dice")} == {"dice": 0.0, "dice_1": 0.0}
    assert out["auc"] == out["auc_1"] < 0.5  # the foreground's pixels score below the background's


def test_shifted_square_known_dice_and_hd95():
    # 4x4 square shifted 2 px sideways: overlap 8 px -> dice 2*8/32; the boundary distances are
    # {0, 1, 2} four times each in both directions, so the 95th percentile is 2.
    out = seg(2, square(cols=slice(4, 8)), square(cols=slice(2, 6)))
    assert out["dice"] == pytest.approx(0.5)
    assert out["hd95"] == pytest.approx(2.0)


def test_hd95_uses_spacing():
    pred, target = torch.zeros(1, 1, 12, 12, dtype=torch.long), torch.zeros(1, 1, 12, 12, dtype=torch.long)
    pred[0, 0, 2, 5] = 1
    target[0, 0, 5, 5] = 1  # 3 px apart along axis 0
    assert seg(2, pred, target)["hd95"] == pytest.approx(3.0)
    assert seg(2, pred, target, spacing=(2.0, 0.5))["hd95"] == pytest.approx(6.0)
    m = Metrics("segmentation", 2)
    m.update(as_probs(pred, 2), target, spacing=(0.5, 1.0))  # per-batch spacing overrides the default
    assert m.compute()["hd95"] == pytest.approx(1.5)


def test_fov_masks_false_positives_outside_it():
    target = square()  # 16 px
    pred = target.clone()
    pred[0, 0, 8:12, 8:12] = 1  # 16 false-positive px in the corner
    fov = torch.ones(1, 1, 12, 12, dtype=torch.uint8)
    fov[0, 0, 8:, 8:] = 0
    assert seg(2, pred, target, hd95=False)["dice"] == pytest.approx(2 * 16 / 48)
    assert seg(2, pred, target, fov, hd95=False)["dice"] == 1.0
    # Target pixels outside the fov are ignored too: a miss there no longer counts.
    inside = fov.clone()
    inside[0, 0, :, 4:] = 0  # keep only columns 0-3: target columns 2-3 inside, prediction misses none
    pred_left = target.clone()
    pred_left[0, 0, :, 4:] = 0
    assert seg(2, pred_left, target, hd95=False)["dice"] == pytest.approx(2 * 8 / 24)
    assert seg(2, pred_left, target, inside, hd95=False)["dice"] == 1.0


def test_empty_classes_are_skipped_and_counted():
    target = torch.zeros(3, 1, 12, 12, dtype=torch.long)
    pred = torch.zeros_like(target)
    target[0, 0, 2:6, 2:6] = 1
    pred[0, 0, 2:6, 2:6] = 1  # image 0: class 1 perfect, class 2 absent in both
    pred[1, 0, 2:6, 2:6] = 2  # image 1: false positive of class 2 (empty target)
    target[2, 0, 2:6, 2:6] = 2  # image 2: class 2 missed entirely (empty prediction)
    out = seg(3, pred, target)
    # dice: image 0 -> 1 (class 2 absent from target, left out), image 1 -> nothing to score,
    # image 2 -> 0; mean over images that have a foreground class in the target.
    assert out["dice"] == pytest.approx(0.5)
    assert out["dice_1"] == 1.0 and out["dice_2"] == 0.0
    assert out["hd95"] == 0.0 and out["hd95_1"] == 0.0 and math.isnan(out["hd95_2"])
    assert out["hd95_skipped"] == 2


def test_batches_accumulate_like_one_batch():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (6, 1, 10, 10), generator=gen)
    pred = torch.randint(0, 3, (6, 1, 10, 10), generator=gen)
    whole = seg(3, pred, target)
    m = Metrics("segmentation", 3)
    for i in (slice(0, 1), slice(1, 4), slice(4, 6)):
        m.update(as_probs(pred[i], 3), target[i])
    assert m.compute() == pytest.approx(whole)
    m.reset()
    with pytest.raises(RuntimeError, match="no samples"):
        m.compute()


def test_segmentation_bad_input():
    m = Metrics("segmentation", 3)
    with pytest.raises(ValueError, match="output must be probabilities"):
        m.update(torch.rand(1, 2, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be class indices of shape"):
        m.update(torch.rand(1, 3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\)"):
        m.update(torch.rand(1, 3, 8, 8), torch.full((1, 1, 8, 8), 3))
    with pytest.raises(ValueError, match="fov must have shape"):
        m.update(torch.rand(1, 3, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.long), fov=torch.ones(1, 8, 8))
    with pytest.raises(ValueError, match="task must be one of"):
        Metrics("detection", 2)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        Metrics("segmentation", 1)


# ---- classification and multilabel ---------------------------------------------------------------------

def test_balanced_accuracy_and_f1_on_an_imbalanced_set():
    target = torch.tensor([0] * 8 + [1] * 2)
    m = Metrics("classification", 2)
    m.update(F.one_hot(torch.zeros(10, dtype=torch.long), 2).float(), target)  # always predicts class 0
    out = m.compute()
    assert out["accuracy"] == pytest.approx(0.8)
    assert out["balanced_accuracy"] == pytest.approx(0.5)  # recall 1 on class 0, 0 on class 1
    assert out["f1"] == pytest.approx((2 * 8 / (2 * 8 + 2) + 0.0) / 2)


def test_auc_matches_the_rank_statistic_binary_and_multiclass():
    gen = torch.Generator().manual_seed(1)
    target = torch.randint(0, 2, (40,), generator=gen)
    p1 = (torch.rand(40, generator=gen) + 0.3 * target).clamp(0, 1)
    p1[:4] = 0.5  # some ties
    m = Metrics("classification", 2)
    m.update(torch.stack([1 - p1, p1], 1), target)
    assert m.compute()["auc"] == pytest.approx(rank_auc(p1, target == 1))

    target = torch.randint(0, 4, (50,), generator=gen)
    prob = probabilities("classification", torch.randn(50, 4, generator=gen) + F.one_hot(target, 4))
    m = Metrics("classification", 4)
    m.update(prob, target)
    expected = sum(rank_auc(prob[:, c], target == c) for c in range(4)) / 4
    assert m.compute()["auc"] == pytest.approx(expected)


def test_multiclass_auc_skips_absent_class_and_f1_is_macro():
    prob = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    target = torch.tensor([0, 1, 1, 1])  # class 2 never occurs
    m = Metrics("classification", 3)
    m.update(prob, target)
    out = m.compute()
    expected_auc = (rank_auc(prob[:, 0], target == 0) + rank_auc(prob[:, 1], target == 1)) / 2
    assert out["auc"] == pytest.approx(expected_auc)
    # predictions [0, 1, 1, 0]: class 0 f1 = 2*1/(2+1) , class 1 f1 = 2*2/(4+1); class 2 unseen, left out
    assert out["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert out["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)


def test_multilabel_metrics():
    gen = torch.Generator().manual_seed(2)
    target = torch.randint(0, 2, (30, 3), generator=gen).float()
    target[:, 2] = 0  # label 2 has no positives: AUC undefined, skipped
    prob = (torch.rand(30, 3, generator=gen) * 0.8 + 0.2 * target)
    m = Metrics("multilabel", 3)
    m.update(prob, target)
    out = m.compute()
    assert out["auc"] == pytest.approx((rank_auc(prob[:, 0], target[:, 0]) + rank_auc(prob[:, 1], target[:, 1])) / 2)
    assert out["accuracy"] == pytest.approx(float(((prob >= 0.5).float() == target).float().mean()))
    pred = prob >= 0.5
    f1s = []
    for c in range(3):
        tp = float((pred[:, c] & target[:, c].bool()).sum())
        denominator = float(pred[:, c].sum() + target[:, c].sum())
        if denominator:
            f1s.append(2 * tp / denominator)
    assert out["f1"] == pytest.approx(sum(f1s) / len(f1s))
    with pytest.raises(ValueError, match="target must be 0/1 labels"):
        m.update(prob, target[:, :2])


def test_classification_bad_input():
    m = Metrics("classification", 3)
    with pytest.raises(ValueError, match=r"output must be probabilities \(B, 3\)"):
        m.update(torch.rand(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="target must be class indices"):
        m.update(torch.rand(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="fov applies to dense tasks"):
        m.update(torch.rand(4, 3), torch.zeros(4, dtype=torch.long), fov=torch.ones(4, 1))


def test_probabilities():
    logits = torch.randn(2, 3, 5, 5)
    assert torch.allclose(probabilities("segmentation", logits).sum(1), torch.ones(2, 5, 5))
    assert torch.allclose(probabilities("multilabel", logits[:, :, 0, 0]), torch.sigmoid(logits[:, :, 0, 0]))
    assert probabilities("restoration", logits) is logits
    assert torch.allclose(probabilities("classification", logits[:, :1, 0, 0]), torch.sigmoid(logits[:, :1, 0, 0]))
    with pytest.raises(ValueError, match="task must be one of"):
        probabilities("regression", logits)


# ---- restoration ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(32,), (16, 16), (12, 12, 12)])
def test_psnr_of_a_known_mse(shape):
    target = torch.rand(2, 1, *shape, generator=torch.Generator().manual_seed(3))
    m = Metrics("restoration", 1)
    m.update(target + 0.1, target)  # MSE 0.01 -> 10*log10(1/0.01) = 20 dB
    out = m.compute()
    assert out["psnr"] == pytest.approx(20.0, abs=1e-4)
    assert out["mae"] == pytest.approx(0.1, abs=1e-6)
    assert ("ssim" in out) == (len(shape) > 1)  # MONAI's SSIM is 2D/3D only
    m = Metrics("restoration", 1, data_range=2.0)
    m.update(target + 0.1, target)
    assert m.compute()["psnr"] == pytest.approx(20.0 + 20 * math.log10(2.0), abs=1e-4)


def test_ssim_and_fov_for_restoration():
    gen = torch.Generator().manual_seed(4)
    target = torch.rand(2, 2, 20, 20, generator=gen)
    noisy = target + 0.2 * torch.randn(2, 2, 20, 20, generator=gen)
    perfect = Metrics("restoration", 2)
    perfect.update(target, target)
    assert perfect.compute()["ssim"] == pytest.approx(1.0)

    plain, with_fov = Metrics("restoration", 2), Metrics("restoration", 2)
    plain.update(noisy, target)
    with_fov.update(noisy, target, fov=torch.ones(2, 1, 20, 20))
    assert with_fov.compute() == pytest.approx(plain.compute())  # an all-ones fov changes nothing

    fov = torch.zeros(2, 1, 20, 20)
    fov[..., :, :10] = 1
    damaged = target.clone()
    damaged[..., :, 10:] += 0.5  # errors only outside the fov
    m = Metrics("restoration", 2)
    m.update(damaged, target, fov)
    out = m.compute()
    assert out["mae"] == 0.0 and math.isinf(out["psnr"])
    with pytest.raises(ValueError, match="same shape"):
        m.update(target, target[:, :1])


def test_metric_names_and_directions():
    assert PRIMARY_METRIC == {"segmentation": "dice", "classification": "auc", "multilabel": "auc",
                              "restoration": "psnr", "mil": "auc", "events": "auc"}
    assert all(name in HIGHER_IS_BETTER for name in PRIMARY_METRIC.values())
    assert higher_is_better("dice_3") and higher_is_better("val_dice") and higher_is_better("balanced_accuracy")
    assert not higher_is_better("hd95") and not higher_is_better("test_hd95_2") and not higher_is_better("mae")
    assert higher_is_better("val_auprc") and not higher_is_better("brier")
    with pytest.raises(ValueError, match="unknown metric"):
        higher_is_better("loss")


# ---- distributed ---------------------------------------------------------------------------------------

def _data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    seg_target = torch.randint(0, 3, (7, 1, 10, 10), generator=gen)
    seg_pred = as_probs(torch.randint(0, 3, (7, 1, 10, 10), generator=gen), 3)
    cls_target = torch.randint(0, 3, (9,), generator=gen)
    cls_prob = torch.softmax(torch.randn(9, 3, generator=gen), 1)
    ml_target = torch.randint(0, 2, (9, 4), generator=gen).float()
    ml_prob = torch.rand(9, 4, generator=gen)
    image = torch.rand(5, 1, 16, 16, generator=gen)
    restored = image + 0.05 * torch.rand(5, 1, 16, 16, generator=gen)
    return {"segmentation": (seg_pred, seg_target), "classification": (cls_prob, cls_target),
            "multilabel": (ml_prob, ml_target), "restoration": (restored, image)}


def _all_metrics(parts: dict[str, slice]) -> dict[str, dict[str, float]]:
    num_classes = {"segmentation": 3, "classification": 3, "multilabel": 4, "restoration": 1}
    results = {}
    for task, (output, target) in _data().items():
        m = Metrics(task, num_classes[task])
        part = parts[task]
        if len(range(len(target))[part]):  # a rank may hold no sample of a task
            m.update(output[part], target[part])
        results[task] = m.compute()
    return results


def _worker(rank: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=2)
    try:
        # Uneven halves; rank 1 holds no restoration sample at all.
        split = {"segmentation": 3, "classification": 5, "multilabel": 4, "restoration": 5}
        parts = {t: slice(0, s) if rank == 0 else slice(s, None) for t, s in split.items()}
        results = _all_metrics(parts)
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def test_distributed_compute_equals_single_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    single = _all_metrics({task: slice(0, None) for task in _data()})
    for rank in (0, 1):
        gathered = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for task, expected in single.items():
            assert gathered[task] == pytest.approx(expected, nan_ok=True), (rank, task)


def test_extend_equals_updating_with_the_same_batches():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 9, 8)
    target = torch.randint(0, 3, (4, 1, 9, 8))
    together = Metrics("segmentation", 3)
    together.update(torch.softmax(logits, 1), target)
    folded = Metrics("segmentation", 3)
    for i in range(4):
        case = Metrics("segmentation", 3)
        case.update(torch.softmax(logits[i:i + 1], 1), target[i:i + 1])
        folded.extend(case)
    assert folded.compute() == pytest.approx(together.compute(), nan_ok=True)
    with pytest.raises(ValueError, match="cannot extend segmentation metrics with 3 classes"):
        folded.extend(Metrics("segmentation", 2))


def test_segmentation_auc_is_the_pooled_pixel_auc_inside_the_fov():
    # Retinal-vessel papers pool every fov pixel of every test image into one ROC; the histogram-based
    # value must agree with MONAI's exact compute_roc_auc on those pixels to within the bin resolution.
    from monai.metrics import compute_roc_auc

    torch.manual_seed(0)
    metrics = Metrics("segmentation", 3, hd95=False)
    probs, targets = [], []
    for _ in range(3):
        target = torch.randint(0, 3, (2, 1, 20, 17))
        logits = torch.randn(2, 3, 20, 17)
        logits[:, 1] += (target[:, 0] == 1).float()
        fov = torch.rand(2, 1, 20, 17) > 0.3
        prob = logits.softmax(1)
        metrics.update(prob, target, fov=fov)
        probs.append(prob.movedim(1, -1)[fov[:, 0]])
        targets.append(target[:, 0][fov[:, 0]])
    result = metrics.compute()
    prob, target = torch.cat(probs), torch.cat(targets)
    for c in (1, 2):
        exact = float(compute_roc_auc(prob[:, c], (target == c).float()))
        assert result[f"auc_{c}"] == pytest.approx(exact, abs=1e-4)
    assert result["auc_1"] > 0.65 > result["auc_2"]  # class 1 was made separable, class 2 was not
    assert result["auc"] == pytest.approx((result["auc_1"] + result["auc_2"]) / 2)
    assert len(metrics._values["auc_hist"]) == 1  # one running histogram, not one per image


def test_segmentation_auc_is_nan_without_both_classes():
    metrics = Metrics("segmentation", 2, hd95=False)
    metrics.update(torch.full((1, 2, 4, 4), 0.5), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    assert math.isnan(metrics.compute()["auc"])


def test_per_class_classification_and_confusion_matrix_by_hand():
    from medssm.engine.metrics import confusion_matrix, per_class_classification

    prob = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.6, 0.2, 0.2]])
    target = torch.tensor([0, 1, 2, 2, 1])
    assert confusion_matrix(prob, target).tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    out = per_class_classification(prob, target)
    assert [out[f"support_{k}"] for k in range(3)] == [1, 2, 2]
    assert out["recall_1"] == 0.5 and out["precision_0"] == 0.5 and out["precision_2"] == 1.0
    assert out["f1_2"] == pytest.approx(2 / 3)
    assert out["auc_0"] == 1.0  # the one class-0 case has the highest class-0 probability
