"""The reference selective scan: a plain PyTorch loop over time, the oracle every fast path is tested against.

It follows mamba_ssm's ``selective_scan_ref`` step for step: fp32 compute, optional softplus on
delta + delta_bias, zero-order-hold decay exp(delta * A) with Euler input delta * B * u, y_t = <h_t, C_t>,
D skip, then the silu(z) gate, cast back to u's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_bc(t: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as fp32 of shape (d, N) (fixed) or (batch, d, N, L) (selective and grouped, per channel)."""
    t = t.float()
    if t.dim() == 2:
        return t
    if t.dim() == 3:
        t = t.unsqueeze(1)  # (batch, 1, N, L): one group shared by all channels
    return t.repeat_interleave(dim // t.shape[1], dim=1)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    """Selective scan by a sequential loop. Shapes as :func:`medssm.ops.selective_scan`."""
    dtype_in = u.dtype
    batch, dim, seqlen = u.shape
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.float()
    Bx, Cx = expand_bc(B, dim), expand_bc(C, dim)
    state = u.new_zeros(batch, dim, A.shape[1])
    # unbind once: indexing [..., t] every step would make the backward allocate a full-size zero
    # gradient per step (O(L^2) time)
    deltas, us = delta.unbind(2), u.unbind(2)
    Bs = [Bx] * seqlen if Bx.dim() == 2 else Bx.unbind(3)
    Cs = [Cx] * seqlen if Cx.dim() == 2 else Cx.unbind(3)
    ys = []
    for dt, u_t, b_t, c_t in zip(deltas, us, Bs, Cs, strict=True):
        dt = dt[:, :, None]  # (batch, d, 1)
        state = torch.exp(dt * A) * state + dt * b_t * u_t[:, :, None]
        ys.append((state * c_t).sum(-1))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    out = y.to(dtype_in)
    return (out, state) if return_last_state else out
