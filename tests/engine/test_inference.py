"""infer(): whole image vs sliding window, flip TTA, eval mode and no autograd, bad arguments."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medssm.engine.inference import flip_combinations, infer

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def pointwise(spatial_dims: int, in_ch: int = 2, out_ch: int = 3) -> nn.Module:
    """A 1x1 conv: translation- and flip-equivariant, so windows and flips cannot change its output."""
    torch.manual_seed(0)
    return CONV[spatial_dims](in_ch, out_ch, kernel_size=1)


def lopsided(spatial_dims: int, in_ch: int = 2, out_ch: int = 3) -> nn.Module:
    """A 3-wide conv with random (asymmetric) weights and zero padding: not flip-equivariant."""
    torch.manual_seed(0)
    return CONV[spatial_dims](in_ch, out_ch, kernel_size=3, padding=1)


class PoolClassifier(nn.Module):
    """Per-pixel linear map then global mean: its logits do not change under flips."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.conv = pointwise(spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(2).mean(-1)


class FirstPixelClassifier(nn.Module):
    """Logits from the first pixel only: flips change them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2)[:, :, 0] * 3.0


SIZES = {1: (37,), 2: (23, 19), 3: (11, 13, 9)}
ROIS = {1: (16,), 2: (8, 10), 3: (6, 5, 4)}


def image(spatial_dims: int, batch: int = 2, channels: int = 2) -> torch.Tensor:
    return torch.randn(batch, channels, *SIZES[spatial_dims], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_roi_equal_to_image_is_the_whole_image_result(spatial_dims):
    model, x = lopsided(spatial_dims), image(spatial_dims)
    whole = infer(model, x, "segmentation")
    assert torch.allclose(whole, torch.softmax(model(x), 1).detach(), atol=1e-6)
    windowed = infer(model, x, "segmentation", roi_size=SIZES[spatial_dims])
    assert torch.allclose(windowed, whole, atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_sliding_window_equals_whole_image_for_a_translation_equivariant_model(spatial_dims, mode):
    model, x = pointwise(spatial_dims), image(spatial_dims)
    whole = infer(model, x, "segmentation")
    windowed = infer(model, x, "segmentation", roi_size=ROIS[spatial_dims], overlap=0.5, mode=mode, sw_batch_size=3)
    assert windowed.shape == whole.shape == (2, 3, *SIZES[spatial_dims])
    assert torch.allclose(windowed, whole, atol=1e-5)
    # A window larger than the image: padded, then cropped back.
    bigger = infer(model, x, "restoration", roi_size=[s + 4 for s in SIZES[spatial_dims]])
    assert torch.allclose(bigger, model(x).detach(), atol=1e-5)


def test_sliding_window_differs_for_a_model_with_context():
    # Sanity check that the window test above can fail: a 3-wide conv sees the zero padding at window edges.
    model, x = lopsided(2), image(2)
    whole = infer(model, x, "segmentation")
    windowed = infer(model, x, "segmentation", roi_size=(8, 10), overlap=0.25, mode="constant")
    assert not torch.allclose(windowed, whole, atol=1e-4)


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_tta_with_a_flip_equivariant_model_changes_nothing(spatial_dims):
    model, x = pointwise(spatial_dims), image(spatial_dims)
    assert torch.allclose(infer(model, x, "segmentation", tta_flips=True), infer(model, x, "segmentation"),
                          atol=1e-6)
    classifier = PoolClassifier(spatial_dims)
    assert torch.allclose(infer(classifier, x, "classification", tta_flips=True),
                          infer(classifier, x, "classification"), atol=1e-6)


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_tta_with_a_lopsided_model_is_the_average_over_flips(spatial_dims):
    model, x = lopsided(spatial_dims), image(spatial_dims)
    plain = infer(model, x, "segmentation")
    tta = infer(model, x, "segmentation", tta_flips=True)
    assert not torch.allclose(tta, plain, atol=1e-4)
    flips = flip_combinations(spatial_dims)
    assert len(flips) == 2**spatial_dims
    with torch.no_grad():
        manual = sum(torch.softmax(model(x.flip(a)), 1).flip(a) if a else torch.softmax(model(x), 1) for a in flips)
    assert torch.allclose(tta, manual / len(flips), atol=1e-6)
    # Sliding window and TTA together still agree with the manual average for a pointwise model.
    pw = pointwise(spatial_dims)
    both = infer(pw, x, "segmentation", roi_size=ROIS[spatial_dims], tta_flips=True)
    assert torch.allclose(both, infer(pw, x, "segmentation"), atol=1e-5)


def test_tta_for_classification_averages_without_flipping_back():
    x = image(2)
    model = FirstPixelClassifier()
    tta = infer(model, x, "multilabel", tta_flips=True)
    manual = sum(torch.sigmoid(model(x.flip(a) if a else x)) for a in flip_combinations(2)) / 4
    assert tta.shape == (2, 2)
    assert torch.allclose(tta, manual)
    assert not torch.allclose(tta, infer(model, x, "multilabel"))


def test_flip_combinations():
    assert flip_combinations(1) == [(), (2,)]
    assert flip_combinations(2) == [(), (2,), (3,), (2, 3)]
    assert len(set(flip_combinations(3))) == 8


class ModeRecorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        self.seen.append(torch.is_grad_enabled())
        return self.conv(x)


def test_eval_mode_no_grad_and_mode_restored():
    model = ModeRecorder().train()
    out = infer(model, torch.randn(1, 1, 8, 8), "segmentation")
    assert model.seen == [False, False]
    assert model.training and not out.requires_grad
    model.eval()
    infer(model, torch.randn(1, 1, 8, 8), "segmentation")
    assert not model.training

    class Boom(ModeRecorder):
        def forward(self, x):
            raise RuntimeError("boom")

    broken = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        infer(broken, torch.randn(1, 1, 8, 8), "segmentation")
    assert broken.training  # restored even when the forward fails


def test_restoration_returns_the_output_itself():
    model, x = pointwise(2, 2, 2), image(2)
    assert torch.equal(infer(model, x, "restoration"), model(x).detach())


def test_bad_arguments():
    model, x = pointwise(2), image(2)
    with pytest.raises(ValueError, match="task must be one of"):
        infer(model, x, "detection")
    with pytest.raises(ValueError, match="applies to dense tasks"):
        infer(PoolClassifier(2), x, "classification", roi_size=8)
    with pytest.raises(ValueError, match="roi_size must be one positive int or 2"):
        infer(model, x, "segmentation", roi_size=(8, 8, 8))
    with pytest.raises(ValueError, match="overlap must be in"):
        infer(model, x, "segmentation", roi_size=8, overlap=1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        infer(model, x, "segmentation", roi_size=8, mode="linear")
    with pytest.raises(ValueError, match="image must be a tensor"):
        infer(model, x[0, 0], "segmentation")
