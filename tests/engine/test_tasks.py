"""The engine implements every task of medssm.conventions, and names the part that does not support one yet
(events: prediction from files)."""

import pytest
import torch

from medssm.conventions import TASKS
from medssm.engine.inference import infer
from medssm.engine.metrics import Metrics
from medssm.engine.predict import predict_path
from medssm.engine.setup import make_loss
from medssm.engine.tasks import ENGINE_TASKS, check_supported


def test_engine_tasks_are_conventions_tasks():
    assert set(ENGINE_TASKS) == set(TASKS)


def test_events_are_trained_and_scored_but_not_predicted_from_files(tmp_path):
    assert "events" in ENGINE_TASKS
    assert Metrics("events", 2).task == "events" and isinstance(make_loss("auto", "events"), torch.nn.CrossEntropyLoss)
    with pytest.raises(ValueError, match="not supported yet by predict_path"):
        predict_path(tmp_path, tmp_path / "out", lambda x: x, task="events")
    with pytest.raises(ValueError, match="flip test-time augmentation needs spatial axes"):
        infer(torch.nn.Identity(), torch.zeros(1, 8, 4), "events", tta_flips=True)


def test_an_unknown_task_lists_every_task():
    with pytest.raises(ValueError, match="task must be one of .*'mil'"):
        check_supported("detection", ENGINE_TASKS, "Metrics")
    assert check_supported("segmentation", ENGINE_TASKS, "Metrics") == "segmentation"
