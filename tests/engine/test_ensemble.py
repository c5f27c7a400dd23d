"""EnsemblePredictor: the mean of the members' probabilities (two identical members give the single one; two
different ones the mean of their softmax, with sliding windows and TTA too), clear errors for members that
cannot be averaged, cross-validation folders as checkpoints, and the fold-leakage warning."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from medssm.engine.checkpoint import save_checkpoint
from medssm.engine.config import config_from_dict
from medssm.engine.ensemble import EnsemblePredictor, resolve_checkpoints, warn_fold_leakage
from medssm.engine.folds import CV_FILE
from medssm.engine.inference import infer
from medssm.models import create_model

ARGS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": [4, 4, 8, 8, 16, 4]}


def _model(seed: int, **changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("unet", **{**ARGS, **changes}).eval()


def _meta(fold: int | None = None, task: str = "segmentation", **changes) -> dict:
    args = {**ARGS, **changes}
    config = {"data": {"name": "folder", "args": {"fold": fold, "num_folds": None if fold is None else 3}},
              "transforms": {"modality": "raster"}, "train": {"max_steps": 1}}
    return {"model": "unet", "model_args": args, "task": task, "num_classes": args["out_channels"],
            "config": config}


def test_two_identical_members_equal_the_single_model_and_two_different_ones_their_mean():
    image = torch.rand(2, 1, 20, 20)
    first, second = _model(0), _model(1)
    single = EnsemblePredictor([first], [_meta()])(image, "segmentation")
    assert torch.equal(single, infer(first, image, "segmentation"))
    twice = EnsemblePredictor([first, first], [_meta(), _meta()])(image, "segmentation")
    assert torch.equal(twice, single)  # (p + p) / 2 is p exactly
    with torch.no_grad():
        expected = (first(image).softmax(1) + second(image).softmax(1)) / 2
    both = EnsemblePredictor([first, second], [_meta(), _meta()])
    torch.testing.assert_close(both(image, "segmentation"), expected, rtol=1e-5, atol=1e-6)
    # Sliding windows and flip TTA are linear in the probabilities: the mean of each member's own result.
    settings = {"roi_size": (16, 16), "overlap": 0.5, "tta_flips": True}
    mean = (infer(first, image, "segmentation", **settings) + infer(second, image, "segmentation", **settings)) / 2
    torch.testing.assert_close(both(image, "segmentation", **settings), mean, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # restoration: the mean of the outputs themselves
        restored = (first(image) + second(image)) / 2
    torch.testing.assert_close(both(image, "restoration"), restored, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("changes,what", [
    ({"out_channels": 2}, "number of classes"),
    ({"in_channels": 2}, "input channels"),
    ({"task": "restoration"}, "task"),
])
def test_members_that_cannot_be_averaged_are_refused(changes, what):
    task = changes.pop("task", "segmentation")
    with pytest.raises(ValueError, match=f"cannot ensemble a and b: their {what} differ"):
        EnsemblePredictor([_model(0), _model(0)], [_meta(), _meta(task=task, **changes)], names=["a", "b"])
    other = _meta()
    other["config"]["transforms"]["modality"] = "mr"
    with pytest.raises(ValueError, match="intensity normalisation"):
        EnsemblePredictor([_model(0), _model(0)], [_meta(), other], names=["a", "b"])


def test_a_cv_folder_names_every_folds_best_checkpoint(tmp_path):
    cv = tmp_path / "cv"
    (cv / "fold_1").mkdir(parents=True)  # not trained yet
    (cv / CV_FILE).write_text(json.dumps({"folds": 2}))
    for fold in (0, 10):
        save_checkpoint(cv / f"fold_{fold}" / "checkpoints" / "best", _model(fold), _meta(fold))
    with pytest.raises(ValueError, match=r"folds \['fold_1'\] not trained"):
        resolve_checkpoints(cv)
    (cv / "fold_1").rename(cv / "fold_2")
    save_checkpoint(cv / "fold_2" / "checkpoints" / "best", _model(2), _meta(2))
    expected = [cv / f"fold_{i}" / "checkpoints" / "best" for i in (0, 2, 10)]  # in fold order, not name order
    assert resolve_checkpoints(cv) == expected
    predictor = EnsemblePredictor.load([cv, expected[0]])
    assert len(predictor) == 4 and predictor.name.startswith("ensemble of 4: ")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoints([tmp_path / "nothing"])


def test_scoring_fold_members_on_a_fold_split_warns(caplog):
    folds = [_meta(0), _meta(1)]
    on_fold = config_from_dict({"data": {"args": {"fold": 0, "num_folds": 3}}, "train": {"max_steps": 1}})
    elsewhere = config_from_dict({"data": {"args": {"root": "new"}}, "train": {"max_steps": 1}})
    with caplog.at_level(logging.WARNING):
        assert warn_fold_leakage(folds, on_fold, "test")
        assert "different cross-validation folds" in caplog.text
        assert not warn_fold_leakage(folds, elsewhere, "test")
        assert not warn_fold_leakage([_meta(0)], on_fold, "test")
        assert not warn_fold_leakage([_meta(), _meta()], on_fold, "test")  # seeds, not folds: no leakage
