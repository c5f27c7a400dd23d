"""One recurrent step of the selective SSM, for decoding token by token (mamba_ssm's selective_state_update).

Given the state h (per channel and state index) and one new token, it computes

    dt  = softplus(dt + dt_bias)            (each part optional)
    h   = exp(dt * A) * h + dt * B * x      (zero-order hold on A, Euler on B, as in the scan)
    out = (<h, C> + D * x) * silu(z)        (D and z optional)

updating ``state`` in place. Two layouts are accepted, as in mamba_ssm: without heads (Mamba-1:
channels ``dim``) or with heads (Mamba-2: ``nheads`` heads of ``dim`` channels each, where B and C
come in ``ngroups`` groups, head h using group h // (nheads // ngroups)).

Backends: ``"torch"`` (plain tensor ops, any device) and ``"triton"`` (one fused kernel: CUDA tensors with
triton installed, or CPU tensors under Triton's interpreter, ``TRITON_INTERPRET=1``); ``"auto"`` picks
triton for CUDA tensors where it can run, torch otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_tensor, shape_or_type


def selective_state_update(state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor,
                           B: torch.Tensor, C: torch.Tensor, D: torch.Tensor | None = None,
                           z: torch.Tensor | None = None, dt_bias: torch.Tensor | None = None,
                           dt_softplus: bool = False, *, backend: str = "auto") -> torch.Tensor:
    """Advance the SSM state by one token (in place) and return that token's output.

    Shapes without heads / with heads:
        state: (batch, dim, dstate) / (batch, nheads, dim, dstate), any float dtype, updated in place.
        x, dt, z: (batch, dim) / (batch, nheads, dim).
        A: (dim, dstate) / (nheads, dim, dstate).
        B, C: (batch, dstate) / (batch, ngroups, dstate), ngroups dividing nheads.
        D, dt_bias: (dim,) / (nheads, dim).

    Computes in fp32 and returns out, shaped like x, in x's dtype. ``backend``: "auto", "torch" or "triton".
    """
    if not isinstance(state, torch.Tensor) or state.dim() not in (3, 4):
        raise ValueError(f"state must have shape (batch, dim, dstate) or (batch, nheads, dim, dstate), "
                         f"got {shape_or_type(state)}")
    has_heads = state.dim() == 4
    if has_heads:
        batch, nheads, dim, dstate = state.shape
        lead, per, txt = (batch, nheads, dim), (nheads, dim), ("(batch, nheads, dim)", "(nheads, dim)")
        if not isinstance(B, torch.Tensor) or B.dim() != 3 or B.shape[0] != batch or B.shape[2] != dstate:
            raise ValueError(f"B must have shape (batch, ngroups, dstate) = ({batch}, ngroups, {dstate}), "
                             f"got {shape_or_type(B)}")
        ngroups = B.shape[1]
        if ngroups < 1 or nheads % ngroups != 0:
            raise ValueError(f"B has ngroups={ngroups}, which must divide nheads={nheads}")
        bc_shape, bc_txt = (batch, ngroups, dstate), "(batch, ngroups, dstate)"
        a_shape, a_txt = (nheads, dim, dstate), "(nheads, dim, dstate)"
    else:
        batch, dim, dstate = state.shape
        lead, per, txt = (batch, dim), (dim,), ("(batch, dim)", "(dim,)")
        bc_shape, bc_txt = (batch, dstate), "(batch, dstate)"
        a_shape, a_txt = (dim, dstate), "(dim, dstate)"
    check_tensor(x, "x", lead, txt[0])
    check_tensor(dt, "dt", lead, txt[0])
    check_tensor(A, "A", a_shape, a_txt)
    check_tensor(B, "B", bc_shape, bc_txt)
    check_tensor(C, "C", bc_shape, bc_txt)
    check_tensor(D, "D", per, txt[1])
    check_tensor(z, "z", lead, txt[0])
    check_tensor(dt_bias, "dt_bias", per, txt[1])
    if _state_update_backend(backend, state.device) == "triton":
        from .scan_triton import selective_state_update_triton

        return selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)

    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    Bf, Cf = B.float(), C.float()
    if has_heads:  # give every head its group's B and C: (batch, nheads, dstate)
        Bf = Bf.repeat_interleave(nheads // ngroups, dim=1)
        Cf = Cf.repeat_interleave(nheads // ngroups, dim=1)
    xf = x.float()
    h = state.float()
    h = torch.exp(dt.unsqueeze(-1) * A.float()) * h + (dt * xf).unsqueeze(-1) * Bf.unsqueeze(-2)
    state.copy_(h)
    out = (h * Cf.unsqueeze(-2)).sum(-1)
    if D is not None:
        out = out + xf * D.float()
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(x.dtype)


def _state_update_backend(backend: str, device: torch.device) -> str:
    """"auto" -> "triton" for CUDA tensors where it can run, else "torch"; an unavailable choice is an error."""
    from .scan_triton import triton_runs_on

    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_runs_on(device) else "torch"
    if backend not in ("torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if backend == "triton" and not triton_runs_on(device):
        raise ValueError(f"selective_state_update backend 'triton' cannot run on {device}: it needs CUDA tensors "
                         "and triton installed (or TRITON_INTERPRET=1 for Triton's interpreter on CPU tensors)")
    return backend
