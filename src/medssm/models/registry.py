"""The model registry (timm's style): ``@register_model`` functions, ``create_model``, ``list_models``.

A registered function builds one network from MONAI-style arguments (``spatial_dims``, ``in_channels``,
``out_channels`` and its own keywords). The registry records what the network does (``task``), which
spatial dims it supports and a default input size for parameter/FLOP counts, so that every model is
exercised by the same tests and listed by ``medssm models``.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

TASKS = ("segmentation", "classification", "restoration")


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one model function."""

    name: str
    fn: Callable[..., nn.Module]
    task: str
    spatial_dims: tuple[int, ...]
    input_size: dict[int, tuple[int, ...]]  # spatial_dims -> default spatial size for counts and tests
    summary: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(task: str, spatial_dims: Sequence[int], input_size: dict[int, Sequence[int]]
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(spatial_dims, in_channels, out_channels, **kwargs) -> nn.Module`` under its name."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        summary = (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, task, tuple(spatial_dims),
                                            {k: tuple(v) for k, v in input_size.items()}, summary)
        return fn

    return decorate


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Sorted registered names matching a shell-style ``pattern`` (and ``task`` when given)."""
    _import_families()
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (task is None or e.task == task))


def get_entry(name: str) -> ModelEntry:
    _import_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names and unexpected keywords raise errors naming them."""
    entry = get_entry(name)
    accepted = inspect.signature(entry.fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"model {name!r} got unexpected arguments {unknown}; it accepts {sorted(accepted)}")
    spatial_dims = kwargs.get("spatial_dims", accepted["spatial_dims"].default if "spatial_dims" in accepted else 2)
    if spatial_dims not in entry.spatial_dims:
        raise ValueError(f"model {name!r} supports spatial_dims {entry.spatial_dims}, got {spatial_dims}")
    try:
        return entry.fn(**kwargs)
    except TypeError as error:  # a keyword forwarded through **kwargs to a constructor that lacks it
        raise TypeError(f"model {name!r}: {error}") from error


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs for one ``example`` batch: matmuls/convs counted by torch's FlopCounterMode plus the
    selective scans counted analytically (``medssm.ops.count_scan_flops``), since the fused scan kernels are
    invisible to the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..ops import count_scan_flops

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, count_scan_flops() as scans:
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) + scans.flops


def _import_families() -> None:
    # Model files register themselves on import; importing the package imports every family.
    from . import mini  # noqa: F401
