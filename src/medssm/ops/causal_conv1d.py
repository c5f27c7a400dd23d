"""Causal depthwise 1-D convolution, with the semantics of the ``causal_conv1d`` package.

Each channel is convolved with its own filter of ``width`` taps, looking only at the current and past
``width - 1`` positions (zero padding on the left), optionally followed by SiLU. ``causal_conv1d`` runs
over a whole sequence; ``causal_conv1d_update`` is one decoding step that keeps the last inputs in a
rolling ``conv_state`` buffer, so both give the same outputs token by token.

``causal_conv1d`` has two backends: "torch" (F.conv1d, any device; the reference) and "cpu" (numba kernels,
channels last, see conv_cpu.py); "auto" takes "cpu" for CPU tensors when numba is installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import shape_or_type
from .selective_scan import numba_available

ACTIVATIONS = (None, "silu", "swish")
BACKENDS = ("torch", "cpu")


def _check_activation(activation: str | None) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def _check_weight_bias(weight: torch.Tensor, bias: torch.Tensor | None, dim: int) -> int:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"weight must have shape (dim, width) = ({dim}, width), got {shape_or_type(weight)}")
    width = weight.shape[1]
    if width < 1:
        raise ValueError(f"weight must have at least one tap (width >= 1), got shape {tuple(weight.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (dim,)):
        raise ValueError(f"bias must have shape (dim,) = ({dim},), got {shape_or_type(bias)}")
    return width


def _activate(out: torch.Tensor, activation: str | None) -> torch.Tensor:
    return out if activation is None else F.silu(out)


MAX_CPU_WIDTH = 4  # the "cpu" kernels' taps, as the causal_conv1d package's CUDA kernels (2 to 4)


def _conv_backend(backend: str, device: torch.device, width: int) -> str:
    numba = numba_available()
    if backend == "auto":
        return "cpu" if device.type == "cpu" and numba and width <= MAX_CPU_WIDTH else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"causal_conv1d backend 'cpu' needs CPU tensors, got {device}")
        if not numba:
            raise ValueError("causal_conv1d backend 'cpu' needs numba, which is not installed")
        if width > MAX_CPU_WIDTH:
            raise ValueError(f"causal_conv1d backend 'cpu' supports weight widths up to {MAX_CPU_WIDTH}, got "
                             f"{width}; use backend='torch'")
    return backend


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Causal depthwise convolution over the last axis.

    Args:
        x: (batch, dim, L) input.
        weight: (dim, width) one filter per channel; tap ``width - 1`` multiplies the current position.
        bias: optional (dim,).
        activation: None, "silu" or "swish" (the same thing).
        backend: "auto", "torch" or "cpu" (widths up to 4; its output is a view of a channels-last tensor).
            "auto" takes "cpu" for CPU tensors when numba is installed and width <= 4, else "torch".

    Returns:
        (batch, dim, L) in x's dtype:
        out[:, c, t] = act(bias[c] + sum_k weight[c, k] * x[:, c, t - width + 1 + k]),
        x being zero before t = 0.
    """
    _check_activation(activation)
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must have shape (batch, dim, L), got {shape_or_type(x)}")
    dim = x.shape[1]
    width = _check_weight_bias(weight, bias, dim)
    if _conv_backend(backend, x.device, width) == "cpu":
        from .conv_cpu import causal_conv1d_cpu

        return causal_conv1d_cpu(x, weight, bias, activation is not None)
    out = F.conv1d(F.pad(x.to(weight.dtype), (width - 1, 0)), weight.unsqueeze(1), bias, groups=dim)
    return _activate(out, activation).to(x.dtype)


def causal_conv1d_update(x: torch.Tensor, conv_state: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """One decoding step of :func:`causal_conv1d`, updating ``conv_state`` in place.

    Args:
        x: (batch, dim) the new input (or (batch, dim, L) for L new inputs at once).
        conv_state: (batch, dim, state_len) with state_len >= width - 1: the most recent inputs, oldest
            first. It is shifted left by the new inputs in place.
        weight: (dim, width). bias: optional (dim,). activation: None, "silu" or "swish".

    Returns:
        (batch, dim) (or (batch, dim, L)) in x's dtype.
    """
    _check_activation(activation)
    if not isinstance(x, torch.Tensor) or x.dim() not in (2, 3):
        raise ValueError(f"x must have shape (batch, dim) or (batch, dim, L), got {shape_or_type(x)}")
    batch, dim = x.shape[:2]
    width = _check_weight_bias(weight, bias, dim)
    if (not isinstance(conv_state, torch.Tensor) or conv_state.dim() != 3
            or tuple(conv_state.shape[:2]) != (batch, dim) or conv_state.shape[2] < width - 1):
        raise ValueError(f"conv_state must have shape (batch, dim, state_len) = ({batch}, {dim}, state_len) "
                         f"with state_len >= width - 1 = {width - 1}, got {shape_or_type(conv_state)}")
    squeeze = x.dim() == 2
    x_new = x.unsqueeze(-1) if squeeze else x
    seqlen, state_len = x_new.shape[-1], conv_state.shape[-1]
    window = torch.cat([conv_state.to(weight.dtype), x_new.to(weight.dtype)], dim=-1)
    conv_state.copy_(window[..., window.shape[-1] - state_len:])
    window = window[..., window.shape[-1] - (seqlen + width - 1):]  # the inputs the new outputs see
    out = F.conv1d(window, weight.unsqueeze(1), bias, groups=dim)
    out = _activate(out, activation).to(x.dtype)
    return out.squeeze(-1) if squeeze else out
