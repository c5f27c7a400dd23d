"""Argument checks shared by the selective-scan backends.

Every public op validates its inputs here once, so that each backend can assume well-formed tensors and
users get an error that names the argument and the shape that was expected.
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


def _expect(t: torch.Tensor | None, name: str, shape: tuple[int, ...], device: torch.device) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {shape}, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    _real_on(t, name, device)


def _real_on(t: torch.Tensor, name: str, device: torch.device) -> None:
    if t.is_complex():
        raise ValueError(f"{name} must be real (complex SSMs are not supported), got dtype {t.dtype}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but u is on {device}: all tensors must share one device")


def _bc_mode(t: torch.Tensor, name: str, batch: int, dim: int, d_state: int, seqlen: int,
             device: torch.device) -> tuple[str, int]:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _real_on(t, name, device)
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
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be a tensor of shape (batch, d, L), got {got}")
    batch, dim, seqlen = u.shape
    device = u.device
    _real_on(u, "u", device)
    if seqlen < 1:
        raise ValueError(f"u must have a sequence length L >= 1, got shape {tuple(u.shape)}")
    if not isinstance(delta, torch.Tensor) or delta.dim() != 3:
        got = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
        raise ValueError(f"delta must have shape ({batch}, {dim}, {seqlen}) like u, got {got}")
    if delta.shape[2] != seqlen:
        raise ValueError(f"delta has sequence length {delta.shape[2]} but u has L={seqlen}")
    _expect(delta, "delta", (batch, dim, seqlen), device)
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A must have shape (d, N) = ({dim}, N), got {got}")
    _real_on(A, "A", device)
    d_state = A.shape[1]
    if not 1 <= d_state <= MAX_D_STATE:
        raise ValueError(f"A has d_state N={d_state}; N must be between 1 and {MAX_D_STATE}")
    b_mode, b_groups = _bc_mode(B, "B", batch, dim, d_state, seqlen, device)
    c_mode, c_groups = _bc_mode(C, "C", batch, dim, d_state, seqlen, device)
    _expect(D, "D", (dim,), device)
    _expect(z, "z", (batch, dim, seqlen), device)
    _expect(delta_bias, "delta_bias", (dim,), device)
    return ScanShape(batch, dim, d_state, seqlen, b_mode, c_mode, b_groups, c_groups)
