"""Which of the tasks in :mod:`medssm.conventions` a part of the engine implements, checked in one place."""

from __future__ import annotations

from ..conventions import check_task

# The tasks the training loop, its losses, metrics and inference implement.
ENGINE_TASKS: tuple[str, ...] = ("segmentation", "classification", "multilabel", "restoration", "mil", "events")

# The tasks whose target is one class index per sample ("mil": per bag; "events": per coded event sequence),
# scored like single-label classification: (batch, classes) logits, softmax probabilities, the same losses,
# metrics and per-class reports.
SINGLE_LABEL_TASKS: tuple[str, ...] = ("classification", "mil", "events")

# The tasks whose input is a sequence without spatial axes (packed tokens (batch, L, features)): no
# spatial_dims for the model, no image transforms, no flip test-time augmentation.
SEQUENCE_TASKS: tuple[str, ...] = ("events",)


def check_supported(task: str, allowed: tuple[str, ...], what: str) -> str:
    """Return ``task`` if ``what`` (e.g. "Metrics") implements it.

    Raises ValueError: conventions.check_task's "task must be one of ..." for a name that is no task at all,
    and "task 'mil' is not supported yet by Metrics (...)" for a known task ``what`` does not implement.
    """
    check_task(task)
    try:
        return check_task(task, allowed=allowed)
    except ValueError:
        raise ValueError(f"task {task!r} is not supported yet by {what} (it supports {', '.join(allowed)})") from None
