"""Argument checks shared by the ops.

Every public op validates its inputs once, with these helpers, so that each backend can assume well-formed
tensors and users get an error that names the argument and the shape that was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_D_STATE = 256  # mamba_ssm's CUDA kernel limit; we keep it so code moves between the two unchanged.


@dataclass(frozen=True)
class ScanShape:
    """Sizes of one selective_scan call. ``b_mode``/``c_mode`` are "fixed", "selective" or "grouped"."""

    batch: int
    dim: int
    d_state: int
    seqlen: int
    b_mode: str
    c_mode: str
    b_groups: int
    c_groups: int


def shape_or_type(t: object) -> tuple[int, ...] | str:
    """What an error message says an argument was: its shape, or its type's name when it is not a tensor."""
    return tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def shape_error(name: str, shape: tuple, t: object, text: str | None = None) -> ValueError:
    """The error for argument ``name`` not having ``shape``, described as ``text = shape`` when given."""
    expected = f"{text} = {shape}" if text else f"{shape}"
    return ValueError(f"{name} must have shape {expected}, got {shape_or_type(t)}")


def check_real(t: torch.Tensor, name: str, device: torch.device | None = None) -> None:
    """``t`` must be a real floating-point tensor, and on ``device`` (u's) when that is given."""
    if t.is_complex():
        raise ValueError(f"{name} must be real (complex SSMs are not supported), got dtype {t.dtype}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but u is on {device}: all tensors must share one device")


def check_tensor(t: object, name: str, shape: tuple[int, ...], text: str | None = None,
                 device: torch.device | None = None) -> None:
    """An optional tensor argument: None passes, anything else must be a real floating-point tensor of exactly
    ``shape`` (on ``device`` when given). ``text`` names the dimensions in the error, e.g. "(batch, dim)"."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        raise shape_error(name, shape, t, text)
    check_real(t, name, device)


def _bc_mode(t: torch.Tensor, name: str, batch: int, dim: int, d_state: int, seqlen: int,
             device: torch.device) -> tuple[str, int]:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check_real(t, name, device)
    shape = tuple(t.shape)
    expected = f"({dim}, {d_state}) fixed, ({batch}, {d_state}, {seqlen}) selective or " \
               f"({batch}, G, {d_state}, {seqlen}) grouped"
    if t.dim() == 2:
        if shape != (dim, d_state):
            raise ValueError(f"{name} must have shape {expected}; got {shape}")
        return "fixed", 1
    if t.dim() == 3:
        if shape != (batch, d_state, seqlen):
            raise ValueError(f"{name} must have shape {expected}; got {shape}")
        return "selective", 1
    if t.dim() == 4:
        groups = shape[1]
        if shape[0] != batch or shape[2] != d_state or shape[3] != seqlen or groups < 1:
            raise ValueError(f"{name} must have shape {expected}; got {shape}")
        if dim % groups != 0:
            raise ValueError(f"{name} has G={groups} groups, which must divide d={dim} (channels per group)")
        return "grouped", groups
    raise ValueError(f"{name} must have 2, 3 or 4 dimensions ({expected}); got {t.dim()} dimensions")


def check_scan_args(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> ScanShape:
    """Validate selective_scan's arguments and return their sizes. Raises ValueError naming the argument."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"u must be a tensor of shape (batch, d, L), got {shape_or_type(u)}")
    batch, dim, seqlen = u.shape
    device = u.device
    check_real(u, "u", device)
    if seqlen < 1:
        raise ValueError(f"u must have a sequence length L >= 1, got shape {tuple(u.shape)}")
    if not isinstance(delta, torch.Tensor) or delta.dim() != 3:
        raise ValueError(f"delta must have shape ({batch}, {dim}, {seqlen}) like u, got {shape_or_type(delta)}")
    if delta.shape[2] != seqlen:
        raise ValueError(f"delta has sequence length {delta.shape[2]} but u has L={seqlen}")
    check_tensor(delta, "delta", (batch, dim, seqlen), device=device)
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must have shape (d, N) = ({dim}, N), got {shape_or_type(A)}")
    check_real(A, "A", device)
    d_state = A.shape[1]
    if not 1 <= d_state <= MAX_D_STATE:
        raise ValueError(f"A has d_state N={d_state}; N must be between 1 and {MAX_D_STATE}")
    b_mode, b_groups = _bc_mode(B, "B", batch, dim, d_state, seqlen, device)
    c_mode, c_groups = _bc_mode(C, "C", batch, dim, d_state, seqlen, device)
    check_tensor(D, "D", (dim,), device=device)
    check_tensor(z, "z", (batch, dim, seqlen), device=device)
    check_tensor(delta_bias, "delta_bias", (dim,), device=device)
    return ScanShape(batch, dim, d_state, seqlen, b_mode, c_mode, b_groups, c_groups)
