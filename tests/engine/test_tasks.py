"""The engine names the part that does not implement a task of medssm.conventions yet (mil; events only in
prediction from files)."""

import pytest
import torch

from medssm.conventions import TASKS
from medssm.engine.inference import infer
from medssm.engine.metrics import Metrics, probabilities
from medssm.engine.predict import predict_path
from medssm.engine.setup import make_loss
from medssm.engine.tasks import ENGINE_TASKS, check_supported


def test_engine_tasks_are_conventions_tasks():
    assert set(ENGINE_TASKS) <= set(TASKS)


def test_events_are_trained_and_scored_but_not_predicted_from_files(tmp_path):
    assert "events" in ENGINE_TASKS
    assert Metrics("events", 2).task == "events" and isinstance(make_loss("auto", "events"), torch.nn.CrossEntropyLoss)
    with pytest.raises(ValueError, match="not supported yet by predict_path"):
        predict_path(tmp_path, tmp_path / "out", lambda x: x, task="events")
    with pytest.raises(ValueError, match="flip test-time augmentation needs spatial axes"):
        infer(torch.nn.Identity(), torch.zeros(1, 8, 4), "events", tta_flips=True)


@pytest.mark.parametrize("task", ["mil"])
def test_a_known_task_the_engine_lacks_is_named_as_not_supported_yet(task, tmp_path):
    with pytest.raises(ValueError, match=f"task '{task}' is not supported yet by Metrics"):
        Metrics(task, 2)
    with pytest.raises(ValueError, match="not supported yet by probabilities"):
        probabilities(task, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="not supported yet by infer"):
        infer(torch.nn.Identity(), torch.zeros(1, 1, 8), task)
    with pytest.raises(ValueError, match="not supported yet by the training losses"):
        make_loss("auto", task)
    with pytest.raises(ValueError, match="not supported yet by predict_path"):
        predict_path(tmp_path, tmp_path / "out", lambda x: x, task=task)


def test_an_unknown_task_lists_every_task():
    with pytest.raises(ValueError, match="task must be one of .*'mil'"):
        check_supported("detection", ENGINE_TASKS, "Metrics")
    assert check_supported("segmentation", ENGINE_TASKS, "Metrics") == "segmentation"
