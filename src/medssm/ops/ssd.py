"""Mamba-2's SSD (state-space duality) scan in pure PyTorch, with mamba_chunk_scan_combined's shapes.

Mamba-2 ties A to one scalar per head, so the recurrence for head h, channel p, state index n is

    dt_t = softplus(dt_t + dt_bias)   (optional), then clamped to dt_limit
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * x_t * B_t       (B_t, C_t from the head's group)
    y_t  = <h_t, C_t> + D * x_t,    out_t = y_t * silu(z_t)  (D and z optional)

``ssd_reference`` runs it token by token (the oracle). ``ssd_chunk_scan`` uses the chunked algorithm:
within a chunk of Q tokens the output is a masked (Q, Q) "attention",
y_i = sum_{j <= i} (C_i . B_j) exp(sum_{j < k <= i} dt_k A) dt_j x_j; the chunks are then linked by
passing each chunk's final state on to the next. Every exponent is a sum of dt * A over tokens of one
chunk (a "segment sum" computed directly, not as a difference of long cumulative sums), so nothing over-
or underflows however long the sequence is (given dt >= 0 and A <= 0, as in Mamba-2; a positive exponent
can overflow in both this and the reference). Any length works: the tail is padded with dt = 0, which
leaves the state unchanged, and cut from the output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import check_real, check_tensor, shape_error, shape_or_type

NO_LIMIT = (0.0, math.inf)


def _check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must have shape (batch, L, nheads, headdim), got {shape_or_type(x)}")
    batch, seqlen, nheads, headdim = x.shape
    if seqlen < 1:
        raise ValueError(f"x must have a sequence length L >= 1, got shape {tuple(x.shape)}")
    check_real(x, "x")
    check_tensor(dt, "dt", (batch, seqlen, nheads), "(batch, L, nheads)")
    check_tensor(A, "A", (nheads,), "(nheads,)")
    if not isinstance(B, torch.Tensor) or B.dim() != 4 or tuple(B.shape[:2]) != (batch, seqlen):
        raise shape_error("B", (batch, seqlen, "ngroups", "d_state"), B, "(batch, L, ngroups, d_state)")
    ngroups, d_state = B.shape[2:]
    if ngroups < 1 or nheads % ngroups != 0:
        raise ValueError(f"B has ngroups={ngroups}, which must divide nheads={nheads}")
    check_real(B, "B")
    check_tensor(C, "C", tuple(B.shape), "(batch, L, ngroups, d_state) like B")
    d_shapes = ((nheads,), (nheads, headdim))
    if D is not None:
        if not isinstance(D, torch.Tensor) or tuple(D.shape) not in d_shapes:
            raise shape_error("D", d_shapes, D, "(nheads,) or (nheads, headdim)")
        check_real(D, "D")
    check_tensor(z, "z", tuple(x.shape), "(batch, L, nheads, headdim) like x")
    check_tensor(dt_bias, "dt_bias", (nheads,), "(nheads,)")
    check_tensor(initial_states, "initial_states", (batch, nheads, headdim, d_state),
                 "(batch, nheads, headdim, d_state)")


def _prepare_dt(dt: torch.Tensor, dt_bias: torch.Tensor | None, dt_softplus: bool,
                dt_limit: tuple[float, float]) -> torch.Tensor:
    """dt in fp32 after the optional bias, softplus and clamp: (batch, L, nheads)."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != NO_LIMIT:
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def _finish(y: torch.Tensor, x: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    """Add the D skip and apply the silu(z) gate to y (batch, L, nheads, headdim) in fp32."""
    if D is not None:
        D = D.float()
        y = y + x.float() * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(z.float())
    return y


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums of a (..., T): out[..., i, j] = a[j+1] + ... + a[i] for i >= j, -inf above the diagonal.

    Each entry is summed directly over its own segment, so exp(out) is accurate even where the running
    cumulative sum of a is large.
    """
    T = a.shape[-1]
    # Built transposed, [..., j, k], so that the running sum goes along the contiguous last dim: torch's CPU
    # cumsum over dim -2 of (48, 256, 256) took 7.3 ms against 1.1 ms over dim -1 (2-core machine), and the
    # autograd of segsum repeats it in the backward. The sums themselves are the same, in the same order.
    after = torch.ones(T, T, dtype=a.dtype, device=a.device).triu(1)  # [j, k] = 1 where k > j
    sums_t = (a.unsqueeze(-2) * after).cumsum(dim=-1)  # sums_t[..., j, i] = sum_{j < k <= i} a[k]
    causal = torch.ones(T, T, dtype=torch.bool, device=a.device).tril()
    return torch.where(causal, sums_t.transpose(-1, -2), -math.inf)


def ssd_chunk_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   chunk_size: int = 256, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   dt_bias: torch.Tensor | None = None, dt_softplus: bool = False,
                   initial_states: torch.Tensor | None = None, return_final_states: bool = False,
                   dt_limit: tuple[float, float] = NO_LIMIT):
    """Mamba-2's SSD scan by the chunked algorithm (pure PyTorch, differentiable, any device).

    Args:
        x: (batch, L, nheads, headdim). dt: (batch, L, nheads). A: (nheads,), normally negative.
        B, C: (batch, L, ngroups, d_state), ngroups dividing nheads; head h uses group
            h // (nheads // ngroups).
        chunk_size: tokens per chunk Q (any L works; memory grows with Q^2 per chunk).
        D: optional (nheads,) or (nheads, headdim) skip. z: optional gate shaped like x.
        dt_bias: optional (nheads,). dt_softplus: apply softplus to dt + dt_bias.
        initial_states: optional (batch, nheads, headdim, d_state) state before the first token.
        return_final_states: also return the state after the last token,
            (batch, nheads, headdim, d_state) fp32.
        dt_limit: (min, max) clamp on dt after the softplus, as in mamba_ssm.

    Returns:
        out (batch, L, nheads, headdim) in x's dtype, or (out, final_states). Computes in fp32.
    """
    _check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2:]
    rep = nheads // ngroups
    dt = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit)

    # Pad to whole chunks (dt = 0 leaves the state unchanged) and split: heads become (group, rep).
    Q = min(chunk_size, seqlen)
    pad = -seqlen % Q
    nchunks = (seqlen + pad) // Q
    xs = F.pad(x.float(), (0, 0, 0, 0, 0, pad)).reshape(batch, nchunks, Q, ngroups, rep, headdim)
    dts = F.pad(dt, (0, 0, 0, pad)).reshape(batch, nchunks, Q, ngroups, rep)
    Bs = F.pad(B.float(), (0, 0, 0, 0, 0, pad)).reshape(batch, nchunks, Q, ngroups, d_state)
    Cs = F.pad(C.float(), (0, 0, 0, 0, 0, pad)).reshape(batch, nchunks, Q, ngroups, d_state)
    x_dt = xs * dts.unsqueeze(-1)  # the input term dt_j * x_j

    # Decay exponents dt * A, time last: (batch, nchunks, ngroups, rep, Q).
    a = (dts * A.float().view(ngroups, rep)).permute(0, 1, 3, 4, 2)
    decay = torch.exp(segsum(a))  # (b, c, g, r, Q, Q): decay from token j to token i of the same chunk
    decay_in = torch.exp(a.cumsum(-1))  # from the chunk's start (its incoming state) to token i
    decay_out = decay[..., -1, :]  # from token j to the chunk's last token
    decay_chunk = decay_in[..., -1]  # across the whole chunk: (b, c, g, r)

    # 1. Within each chunk: y_i = sum_{j <= i} (C_i . B_j) decay[i, j] dt_j x_j.
    scores = torch.einsum("bcign,bcjgn->bcgij", Cs, Bs).unsqueeze(3) * decay
    y = torch.einsum("bcgrij,bcjgrp->bcigrp", scores, x_dt)

    # 2. Each chunk's own contribution to the state at its end: (b, c, g, r, headdim, d_state).
    x_dt_out = x_dt * decay_out.permute(0, 1, 4, 2, 3).unsqueeze(-1)
    chunk_states = torch.einsum("bcjgrp,bcjgn->bcgrpn", x_dt_out, Bs)

    # 3. Pass states across chunks: the state entering chunk c, then the final state.
    if initial_states is None:
        state = x.new_zeros(batch, ngroups, rep, headdim, d_state, dtype=torch.float32)
    else:
        state = initial_states.float().reshape(batch, ngroups, rep, headdim, d_state)
    entering = []
    for c in range(nchunks):
        entering.append(state)
        state = decay_chunk[:, c, :, :, None, None] * state + chunk_states[:, c]
    entering = torch.stack(entering, dim=1)

    # 4. The entering state's contribution to each token: (C_i . state) decayed from the chunk start.
    y_prev = torch.einsum("bcign,bcgrpn->bcigrp", Cs, entering)
    y = y + y_prev * decay_in.permute(0, 1, 4, 2, 3).unsqueeze(-1)

    y = y.reshape(batch, nchunks * Q, nheads, headdim)[:, :seqlen]
    out = _finish(y, x, D, z).to(x.dtype)
    if return_final_states:
        return out, state.reshape(batch, nheads, headdim, d_state)
    return out


def ssd_reference(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                  dt_bias: torch.Tensor | None = None, dt_softplus: bool = False,
                  initial_states: torch.Tensor | None = None, return_final_states: bool = False,
                  dt_limit: tuple[float, float] = NO_LIMIT):
    """The SSD op as a plain loop over time, the oracle for :func:`ssd_chunk_scan`.

    Same arguments and results as ssd_chunk_scan, without chunk_size.
    """
    _check_ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states)
    batch, seqlen, nheads, headdim = x.shape
    ngroups, d_state = B.shape[2:]
    dt = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit)
    xf = x.float()
    Bh = B.float().repeat_interleave(nheads // ngroups, dim=2)  # (batch, L, nheads, d_state)
    Ch = C.float().repeat_interleave(nheads // ngroups, dim=2)
    if initial_states is None:
        state = x.new_zeros(batch, nheads, headdim, d_state, dtype=torch.float32)
    else:
        state = initial_states.float()
    ys = []
    for t in range(seqlen):
        dt_t = dt[:, t, :, None, None]  # (batch, nheads, 1, 1)
        state = torch.exp(dt_t * A.float()[:, None, None]) * state \
            + dt_t * xf[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append((state * Ch[:, t, :, None, :]).sum(-1))
    y = torch.stack(ys, dim=1)
    out = _finish(y, x, D, z).to(x.dtype)
    return (out, state) if return_final_states else out
