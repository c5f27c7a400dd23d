"""The "torch" selective-scan backend: chunked pure PyTorch with a hand-written chunked backward.

Same semantics as :func:`medssm.ops.scan_reference.selective_scan_reference` (mamba_ssm's
``selective_scan_ref``), but fast, frugal with memory and numerically safe at any sequence length; it runs
on any device and can be traced (``torch.jit.trace``) and exported (``torch.export.export``).

Algorithm. The sequence, zero-padded to ``nc * T`` steps (padding has delta = 0, which leaves the state
unchanged), is cut into ``nc`` chunks of ``T`` steps, and all chunks are scanned *at the same time*: a
Python loop over the T positions updates one (batch, nc, G, N, d/G) "slab" per step, so each op touches
~b*d*N*L/T elements and the Python overhead is O(T) ops, not O(L).

1. Local pass: scan every chunk from a zero state; keep only the chunk-end states.
2. Carry pass: h_in[c+1] = exp(A * sum of delta over chunk c) * h_in[c] + h_end[c], a log-depth scan over
   chunks. Decays are only ever multiplied (each is exp of a non-positive number, so products can only
   underflow towards 0, the right answer). Nothing forms exp(A * (cumsum[t] - cumsum[s])) from a global
   cumsum: that difference loses all precision once L is large, and its pieces overflow, which is why
   VMamba's ``selective_scan_easy`` returns NaN on long chunks.
3. Output pass: rescan every chunk from its true initial state h_in[c] and form y_t = <h_t, C_t>.

Steps go in blocks of k: exp(delta * A) and delta * u * B are formed for a whole block at once, the
recurrence is one in-place ``addcmul_`` per step, and contractions over N are batched matmuls. Only a few
blocks (each ~b*d*N*L*k/T elements) are alive at a time; nothing of size b*d*L*N is ever allocated.

The backward mirrors this with the adjoint lambda_t = C_t g_t + a_{t+1} lambda_{t+1} (a_t = exp(delta_t A)):
one forward rescan from the chunk-start states keeps the state before every block (1/k of the volume,
alive only during the backward) and, with the same decays, each chunk's local adjoint seed; a reverse
carry pass over chunks gives the adjoint entering each chunk from the right; then per block, last first,
the states and the adjoint are recomputed and every gradient follows from lambda, h and a. Like
mamba_ssm's kernel, autograd keeps only the inputs themselves and the chunk-start states (b*d*N*L/T):
the D skip, the silu(z) gate and the delta bias/softplus live inside the autograd Function, so no
(b, d, L) intermediate is saved either.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .scan_torch_layout import BLOCK, STEP, StepLayout
from .scan_torch_passes import scan_backward, scan_forward


def _delta_steps(lay: StepLayout, delta: torch.Tensor, delta_bias: torch.Tensor | None, delta_softplus: bool,
                 derivative: bool = False) -> torch.Tensor:
    """softplus(delta + delta_bias) (as asked) in step layout, or with ``derivative`` its derivative.

    Applied before padding so that padded steps keep delta = 0 (identity steps)."""
    x = delta.float()
    if delta_bias is not None:
        x = x + delta_bias.float()[:, None]
    if derivative:
        return lay.seq_in(torch.sigmoid(x))
    return lay.seq_in(F.softplus(x) if delta_softplus else x)


def _forward(lay: StepLayout, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
             delta_softplus: bool, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward on the public layouts. Returns out (b, d, L) in u's dtype, the last state (b, d, N) fp32
    and the chunk-start states (for the backward)."""
    y_s, h_in, last = scan_forward(_delta_steps(lay, delta, delta_bias, delta_softplus), lay.seq_in(u),
                                   lay.mat_in(A), lay.bc_in(B), lay.bc_in(C), k)
    # The D skip and the gate on the public layout: z then needs no conversion to the step layout.
    out = lay.seq_out(y_s)
    if D is not None:
        out = torch.addcmul(out, u.float(), D.float()[:, None])
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(u.dtype), lay.state_out(last), h_in


class _ScanFn(torch.autograd.Function):
    """The whole selective scan (bias/softplus, scan, D skip, gate) with a chunked hand-written backward.

    B and C come canonical: fp32, fixed (d, N) or grouped (b, G, N, L) with one G for both. Saves only its
    inputs and the chunk-start states (b*d*N*L/T); everything else is recomputed in the backward.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, lay, k):
        out, last, h_in = _forward(lay, u, delta, A, B, C, D, z, delta_bias, delta_softplus, k)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h_in)
        ctx.lay, ctx.k, ctx.delta_softplus = lay, k, delta_softplus
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    @once_differentiable  # the hand-written backward is not itself differentiable: say so if asked
    def backward(ctx, g_out, g_last):
        u, delta, A, B, C, D, z, delta_bias, h_in = ctx.saved_tensors
        lay: StepLayout = ctx.lay
        u_s = lay.seq_in(u)
        if g_out is None:
            gy_s, g_gate = torch.zeros_like(u_s), None
        else:
            gy_s = lay.seq_in(g_out)
            g_gate = None
            if z is not None:
                z_s = lay.seq_in(z)
                sz = torch.sigmoid(z_s)
                # d out / d z = (y + D u) * silu'(z), silu'(z) = sz (1 + z (1 - sz)); y comes later.
                g_gate = gy_s * sz * (1 + z_s * (1 - sz))
                gy_s = gy_s * (z_s * sz)  # d loss / d (y + D u)
                del z_s, sz
        D_w = lay.vec_in(D) if D is not None else None
        du_s, ddelta_s, dA, dB, dC = scan_backward(
            _delta_steps(lay, delta, delta_bias, ctx.delta_softplus), u_s, lay.mat_in(A), lay.bc_in(B),
            lay.bc_in(C), h_in, gy_s, lay.state_in(g_last) if g_last is not None else None, ctx.k,
            gate=(g_gate, D_w) if g_gate is not None else None)
        # Convert each gradient as soon as it is final, so that step and public copies don't pile up.
        dz = dD = d_bias = None
        if g_gate is not None:
            dz = lay.seq_out(g_gate).to(z.dtype)
        elif z is not None:
            dz = torch.zeros_like(z)
        del g_gate
        if D is not None:
            du_s.addcmul_(gy_s, D_w)
            dD = (gy_s * u_s).sum((0, 1, STEP)).reshape(-1).to(D.dtype)
        del gy_s
        du = lay.seq_out(du_s).to(u.dtype)
        del du_s, u_s
        if ctx.delta_softplus:
            ddelta_s.mul_(_delta_steps(lay, delta, delta_bias, True, derivative=True))
        ddelta = lay.seq_out(ddelta_s)  # (drops the padded steps, whose gradients are meaningless)
        del ddelta_s
        if delta_bias is not None:
            d_bias = ddelta.sum((0, 2)).to(delta_bias.dtype)
        ddelta = ddelta.to(delta.dtype)
        return (du, ddelta, lay.mat_out(dA).to(A.dtype), lay.bc_out(dB), lay.bc_out(dC), dD, dz, d_bias,
                None, None, None)


def _canonical_bc(B: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 B, C as fixed (d, N) or grouped (b, G, N, L) with one G for both (selective is G = 1; two
    different group counts are brought to their least common multiple, which divides d)."""
    B, C = B.float(), C.float()
    B = B.unsqueeze(1) if B.dim() == 3 else B
    C = C.unsqueeze(1) if C.dim() == 3 else C
    groups = [x.shape[1] for x in (B, C) if x.dim() == 4]
    if len(groups) == 2 and groups[0] != groups[1]:
        G = math.lcm(*groups)
        B = B.repeat_interleave(G // B.shape[1], dim=1)
        C = C.repeat_interleave(G // C.shape[1], dim=1)
    return B, C


def selective_scan_torch(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                         C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                         delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                         return_last_state: bool = False, chunk_size: int | None = None):
    """Selective scan in chunked pure PyTorch: any device, differentiable, traceable and exportable.

    Shapes and semantics as :func:`medssm.ops.selective_scan`: u, delta, z (batch, d, L); A (d, N);
    B, C (d, N), (batch, N, L) or (batch, G, N, L); D, delta_bias (d,). Returns out (batch, d, L) in u's
    dtype and, with ``return_last_state``, the final state (batch, d, N) in fp32. Gradients come back in
    each input's dtype.

    ``chunk_size`` trades Python overhead (O(chunk_size) ops) against the size of each op (default: on
    CPU, chunks of ~96 K / (b*d*N) elements per step, at least 32 and 4 N steps; elsewhere ~2 sqrt(L), at least
    256); it changes results only by rounding. Under ``torch.jit.trace`` the forward's
    plain tensor ops are recorded (an inference graph: ``jit.save``-able, not for training).
    """
    tracing = torch.jit.is_tracing()
    with warnings.catch_warnings() if tracing else contextlib.nullcontext():
        if tracing:
            # Python loops follow the shapes, so a trace is specialised to them (as documented): silence
            # the tracer's warning about every shape read.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
        Bc, Cc = _canonical_bc(B, C)
        batch, dim, seqlen = u.shape
        groups = Bc.shape[1] if Bc.dim() == 4 else Cc.shape[1] if Cc.dim() == 4 else 1
        lay = StepLayout(batch, dim, A.shape[1], seqlen, groups, chunk_size, u.device.type == "cpu")
        if tracing:
            # The tracer would record the autograd.Function as an opaque Python op that cannot be saved,
            # so record the forward's plain ops instead.
            out, last, _ = _forward(lay, u, delta, A, Bc, Cc, D, z, delta_bias, delta_softplus, BLOCK)
        else:
            out, last = _ScanFn.apply(u, delta, A, Bc, Cc, D, z, delta_bias, delta_softplus, lay, BLOCK)
    return (out, last) if return_last_state else out
