"""The engine names the part that does not implement a task of medssm.conventions yet (events)."""

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


@pytest.mark.parametrize("task", ["events"])
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
