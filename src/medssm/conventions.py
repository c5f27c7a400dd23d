"""The names every layer of the package shares: tasks and spatial dimensions.

One definition of each, imported by the registry (``models``), the data sets (``data``) and the engine, so a
new task is added here once. This module imports nothing from the rest of the package (nor torch).
"""

from __future__ import annotations

# What a data set asks of a model, and so what a model's output means. A model is registered under the task
# of its output; "multilabel" data trains a "classification" model (one logit per label).
TASKS: dict[str, str] = {
    "segmentation": "a class per voxel: (batch, classes, *spatial) logits",
    "classification": "a class per image or signal: (batch, classes) logits",
    "multilabel": "several independent binary labels per image or signal: (batch, labels) logits",
    "restoration": "an image per image (denoising, super-resolution): (batch, channels, *spatial) values",
    "mil": "a class per bag of instances (patches or their features, multiple-instance learning): "
           "(batch, classes) logits from (batch, instances, ...) input",
    "events": "a class per sequence of coded clinical events (EHR): (batch, classes) logits",
}

# The tasks whose output has the input's spatial size (sliding-window inference, per-voxel metrics).
DENSE_TASKS: tuple[str, ...] = ("segmentation", "restoration")

# The task a model is registered under for each data task.
MODEL_TASK: dict[str, str] = {task: ("classification" if task == "multilabel" else task) for task in TASKS}

SPATIAL_DIMS: tuple[int, ...] = (1, 2, 3)


def check_task(task: str, allowed: tuple[str, ...] | None = None) -> str:
    """Return ``task`` if it is one of ``allowed`` (default: every task in ``TASKS``), else raise ValueError."""
    allowed = tuple(TASKS) if allowed is None else allowed
    if task not in allowed:
        raise ValueError(f"task must be one of {allowed}, got {task!r}")
    return task


def check_spatial_dims(spatial_dims: int, allowed: tuple[int, ...] = SPATIAL_DIMS, what: str = "spatial_dims") -> int:
    """Return ``spatial_dims`` if it is one of ``allowed`` (default 1, 2, 3), else raise ValueError naming ``what``."""
    if spatial_dims not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {spatial_dims!r}")
    return spatial_dims
