"""The model registry (timm's style): ``@register_model`` functions, ``create_model``, ``list_models``.

A registered function builds one network from MONAI-style arguments (``spatial_dims``, ``in_channels``,
``out_channels`` and its own keywords). The registry records what the network does (``task``, one of
``conventions.TASKS`` that a model is registered under), which spatial dims it supports and a default input
size, so that every model is exercised by the same tests and listed by ``medssm models``.

This module imports no model family: each family module imports :func:`register_model` and registers its
functions when imported, and ``medssm.models`` (the package) imports every family module, so the registry
seen through ``medssm.models`` holds every model.

Models without spatial axes ("mil": bags of instances; "events": sequences of coded clinical events) are
registered with ``spatial_dims=()``: their function takes no ``spatial_dims`` argument, and ``input_size`` is
keyed by ``None`` with a one-element size, the number of instances or events. Example inputs, for counts and
tests, come from :meth:`ModelEntry.example_input`, which needs no knowledge of the family:

==========================  ==============================================================================
entry                       example input of ``batch`` samples, ``in_channels`` channels and ``size``
==========================  ==============================================================================
spatial (spatial_dims set)  ``randn(batch, in_channels, *size)``
"mil", no spatial dims      ``randn(batch, size[0], in_channels)``: a bag of size[0] instance feature vectors
"events", no spatial dims   ``randint(0, in_channels, (batch, size[0]))``: size[0] codes from a vocabulary
                            of in_channels
other                       the entry's own ``example_input`` callable, given to :func:`register_model`
==========================  ==============================================================================
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..conventions import DENSE_TASKS, MODEL_TASK, check_spatial_dims, check_task

# The tasks a model can be registered under (a "multilabel" data set trains a "classification" model).
MODEL_TASKS: tuple[str, ...] = tuple(dict.fromkeys(MODEL_TASK.values()))

# (batch, in_channels, size) -> an example input tensor.
ExampleInput = Callable[[int, int, tuple[int, ...]], torch.Tensor]


def grid_input(batch: int, in_channels: int, size: tuple[int, ...]) -> torch.Tensor:
    """A channels-first grid (batch, in_channels, *size) of standard normal values."""
    return torch.randn(batch, in_channels, *size)


def bag_input(batch: int, in_channels: int, size: tuple[int, ...]) -> torch.Tensor:
    """Bags of instance features (batch, instances = size[0], in_channels) of standard normal values."""
    return torch.randn(batch, size[0], in_channels)


def event_input(batch: int, in_channels: int, size: tuple[int, ...]) -> torch.Tensor:
    """Event code sequences (batch, events = size[0]), int64 codes in [0, in_channels)."""
    return torch.randint(0, in_channels, (batch, size[0]))


_NON_SPATIAL_INPUTS: dict[str, ExampleInput] = {"mil": bag_input, "events": event_input}


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one model function.

    ``spatial_dims`` is () for a model without spatial axes; ``input_size`` maps each of ``variants`` (the
    supported spatial_dims, or None) to the default size for counts and tests; ``make_input`` builds an
    example input from (batch, in_channels, size).
    """

    name: str
    fn: Callable[..., nn.Module]
    task: str
    spatial_dims: tuple[int, ...]
    input_size: dict[int | None, tuple[int, ...]]
    summary: str
    make_input: ExampleInput

    @property
    def variants(self) -> tuple[int | None, ...]:
        """The spatial_dims values the model is built with: its spatial_dims, or (None,) without spatial axes."""
        return self.spatial_dims or (None,)

    def model_kwargs(self, spatial_dims: int | None) -> dict[str, int]:
        """The keywords that select a variant: ``{"spatial_dims": spatial_dims}``, or {} for None."""
        self._check_variant(spatial_dims)
        return {} if spatial_dims is None else {"spatial_dims": spatial_dims}

    def example_input(self, spatial_dims: int | None = None, batch: int = 1, in_channels: int | None = None,
                      size: Sequence[int] | None = None) -> torch.Tensor:
        """An example input for the variant ``spatial_dims`` (None for a model without spatial axes), of
        ``size`` (default: the entry's input_size) and ``in_channels`` (default: the model function's default,
        else 1) -- see the module docstring for the layouts."""
        self._check_variant(spatial_dims)
        if in_channels is None:
            default = inspect.signature(self.fn).parameters.get("in_channels")
            in_channels = 1 if default is None or default.default is default.empty else default.default
        return self.make_input(batch, in_channels, tuple(self.input_size[spatial_dims] if size is None else size))

    def output_shape(self, batch: int, out_channels: int, size: Sequence[int]) -> tuple[int, ...]:
        """The output shape for an input of ``size``: (batch, out_channels, *size) for a dense task, else
        (batch, out_channels)."""
        return (batch, out_channels, *size) if self.task in DENSE_TASKS else (batch, out_channels)

    def _check_variant(self, spatial_dims: int | None) -> None:
        if spatial_dims not in self.variants:
            raise ValueError(f"model {self.name!r} supports spatial_dims {self.variants}, got {spatial_dims!r}")


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(task: str, spatial_dims: Sequence[int], input_size: dict[int | None, Sequence[int]],
                   example_input: ExampleInput | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(spatial_dims, in_channels, out_channels, **kwargs) -> nn.Module`` under its name.

    Args:
        task: one of ``MODEL_TASKS`` (``conventions.TASKS`` but "multilabel").
        spatial_dims: the supported spatial dims (each 1, 2 or 3), or () for a model without spatial axes
            (its function then takes no ``spatial_dims``).
        input_size: default input size per spatial_dims, keyed by None when spatial_dims is ().
        example_input: (batch, in_channels, size) -> example input; default per the module docstring.
    """
    check_task(task, MODEL_TASKS)
    dims = tuple(check_spatial_dims(d) for d in spatial_dims)
    if not dims and task in DENSE_TASKS:
        raise ValueError(f"a {task!r} model's output is on a grid: it needs spatial_dims, got ()")
    variants = dims or (None,)
    if set(input_size) != set(variants):
        raise ValueError(f"input_size must have one size per spatial_dims {variants}, got keys {list(input_size)}")
    sizes = {k: tuple(v) for k, v in input_size.items()}
    if any(len(size) != (1 if k is None else k) for k, size in sizes.items()):
        raise ValueError(f"each input_size must have one value per spatial axis (one, the length, for None), "
                         f"got {sizes}")
    make_input = example_input or (grid_input if dims else _NON_SPATIAL_INPUTS.get(task))
    if make_input is None:
        raise ValueError(f"a {task!r} model without spatial_dims needs an example_input callable")

    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        summary = (inspect.getdoc(fn) or "").split("\n")[0]
        _REGISTRY[fn.__name__] = ModelEntry(fn.__name__, fn, task, dims, sizes, summary, make_input)
        return fn

    return decorate


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Sorted registered names matching a shell-style ``pattern`` (and ``task`` when given: one of
    ``MODEL_TASKS``, else ValueError listing them)."""
    if task is not None:
        check_task(task, MODEL_TASKS)
    return sorted(n for n, e in _REGISTRY.items()
                  if fnmatch.fnmatch(n, pattern) and (task is None or e.task == task))


def get_entry(name: str) -> ModelEntry:
    """The registry's entry for ``name``; an unknown name raises ValueError listing the registered ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown names and unexpected keywords raise errors naming them."""
    entry = get_entry(name)
    accepted = inspect.signature(entry.fn).parameters
    if not entry.spatial_dims and "spatial_dims" in kwargs:
        raise ValueError(f"model {name!r} ({entry.task}) has no spatial axes: it takes no spatial_dims")
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(f"model {name!r} got unexpected arguments {unknown}; it accepts {sorted(accepted)}")
    if entry.spatial_dims:
        default = accepted["spatial_dims"].default if "spatial_dims" in accepted else 2
        spatial_dims = kwargs.get("spatial_dims", default)
        if spatial_dims not in entry.spatial_dims:
            raise ValueError(f"model {name!r} supports spatial_dims {entry.spatial_dims}, got {spatial_dims}")
    try:
        return entry.fn(**kwargs)
    except TypeError as error:  # a keyword forwarded through **kwargs to a constructor that lacks it
        names = accepted_arguments(name)
        unknown = sorted(set(kwargs) - set(names)) if names else []
        if unknown:
            raise TypeError(f"model {name!r} got unexpected arguments {unknown}; it accepts {names}") from error
        raise TypeError(f"model {name!r}: {error}") from error


def accepted_arguments(name: str) -> list[str]:
    """The keyword arguments ``create_model(name, ...)`` accepts: the registered function's own and, where it
    forwards ``**kwargs``, those of the class of the model it builds with its defaults ([] if that fails)."""
    entry = get_entry(name)
    params = inspect.signature(entry.fn).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        try:
            built = type(entry.fn())
        except Exception:  # noqa: BLE001  (only a better error message depends on it)
            return []
        for cls in built.__mro__:  # up the classes while each __init__ forwards **kwargs to its parent's
            if "__init__" not in vars(cls):
                continue
            init = inspect.signature(cls.__init__).parameters
            names |= {n for n, p in init.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
            if not any(p.kind is p.VAR_KEYWORD for p in init.values()):
                break
    return sorted(names)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs for one ``example`` batch: matmuls/convs counted by torch's FlopCounterMode plus the
    selective scans counted analytically (``medssm.ops.count_scan_flops``), since the fused scan kernels are
    invisible to the counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..ops import count_scan_flops

    was_training = model.training
    # PyTorch's fused transformer fast path (eval, no grad) runs one op the counter cannot see; count the
    # unfused matmuls instead.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, count_scan_flops() as scans:
            model(example)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    return int(counter.get_total_flops()) + scans.flops
