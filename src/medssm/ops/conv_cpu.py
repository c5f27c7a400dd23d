"""The "cpu" backend of causal_conv1d: numba kernels for the forward and backward, channels last.

Mamba's convolution input is a slice of a transposed (batch, L, 2 * d_inner) projection, so its channel
axis is the contiguous one. The kernels work in that layout, (batch, L, dim) rows, vectorising over channels
with the four taps in one pass (weights zero-padded on the left to 4 taps, the widths the causal_conv1d
package's kernels support). They read the input in place when it is fp32 in that layout and return the
output as a (batch, dim, L) view of a channels-last tensor, which x_proj and the scan read without copies;
other layouts are copied to channels last first (a transposing copy, about 0.7 ms at (1, 192, 4096)).

Jobs are (batch element, block of T_BLOCK steps), run on the selective scan's threads. The backward
recomputes the activation's input, and each job computes the pre-activation gradient for its own steps
plus the three after them, so that every input gradient is written by one job only. Weight and bias
gradients go to per-worker partial sums.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .cpu.simd import ONE, ZERO, njit_inline, njit_kernel, sigmoid
from .cpu.workers import run_jobs, worker_count

T_BLOCK = 64  # steps per job
MAX_WIDTH = 4  # as the causal_conv1d package's kernels: weights are padded on the left to 4 taps


@njit_inline
def _pre_activation(x, b, t, w4, bias, pre):
    """pre[c] = bias[c] + sum_k w4[k, c] * x[b, t - 3 + k, c] (x = 0 before step 0): all four taps in one
    pass over the channels once t >= 3."""
    dim = pre.shape[0]
    if t >= MAX_WIDTH - 1:
        for c in range(dim):
            pre[c] = (bias[c] + w4[0, c] * x[b, t - 3, c] + w4[1, c] * x[b, t - 2, c] + w4[2, c] * x[b, t - 1, c]
                      + w4[3, c] * x[b, t, c])
    else:
        for c in range(dim):
            pre[c] = bias[c]
        for k in range(MAX_WIDTH - 1 - t, MAX_WIDTH):
            for c in range(dim):
                pre[c] += w4[k, c] * x[b, t - 3 + k, c]


@njit_kernel
def _conv_fwd(job_lo, job_hi, x, w4, bias, silu, n_blocks, out):
    """out[b, t, c] = act(bias[c] + sum_k w4[k, c] * x[b, t - 3 + k, c]) for jobs [job_lo, job_hi).
    x: (batch, L, row >= dim) channels last, C-contiguous (only the first dim channels are read); w4: (4, dim)
    taps, zero-padded on the left; out: (batch, L, dim)."""
    seqlen, dim = out.shape[1], out.shape[2]
    pre = np.empty(dim, np.float32)
    for job in range(job_lo, job_hi):
        b = job // n_blocks
        t0 = job % n_blocks * T_BLOCK
        for t in range(t0, min(t0 + T_BLOCK, seqlen)):
            _pre_activation(x, b, t, w4, bias, pre)
            if silu:
                for c in range(dim):
                    out[b, t, c] = pre[c] * sigmoid(pre[c])
            else:
                for c in range(dim):
                    out[b, t, c] = pre[c]


@njit_kernel
def _conv_bwd(job_lo, job_hi, tid, x, w4, bias, silu, n_blocks, g, dx, dw_part, db_part):
    """Gradients for jobs [job_lo, job_hi) on worker ``tid``: dx (batch, L, dim), and worker ``tid``'s partial
    sums dw_part[tid] (4, dim) and db_part[tid] (dim,). x and w4 as in _conv_fwd; g: the output gradient,
    laid out as x."""
    seqlen, dim = dx.shape[1], dx.shape[2]
    gp = np.zeros((T_BLOCK + MAX_WIDTH - 1, dim), np.float32)  # dL/d(pre-activation), steps t0 .. t1 + 2
    pre = np.empty(dim, np.float32)
    for job in range(job_lo, job_hi):
        b = job // n_blocks
        t0 = job % n_blocks * T_BLOCK
        t1 = min(t0 + T_BLOCK, seqlen)
        t_end = min(t1 + MAX_WIDTH - 1, seqlen)
        for t in range(t0, t_end):
            if silu:
                _pre_activation(x, b, t, w4, bias, pre)
                for c in range(dim):
                    sg = sigmoid(pre[c])
                    gp[t - t0, c] = g[b, t, c] * sg * (ONE + pre[c] * (ONE - sg))
            else:
                for c in range(dim):
                    gp[t - t0, c] = g[b, t, c]
        for t in range(t_end, t1 + MAX_WIDTH - 1):  # past the sequence's end: no gradient
            for c in range(dim):
                gp[t - t0, c] = ZERO
        for t in range(t0, t1):  # weight and bias: each output step's own terms
            i = t - t0
            if t >= MAX_WIDTH - 1:
                for c in range(dim):
                    gv = gp[i, c]
                    db_part[tid, c] += gv
                    dw_part[tid, 0, c] += gv * x[b, t - 3, c]
                    dw_part[tid, 1, c] += gv * x[b, t - 2, c]
                    dw_part[tid, 2, c] += gv * x[b, t - 1, c]
                    dw_part[tid, 3, c] += gv * x[b, t, c]
            else:
                for c in range(dim):
                    db_part[tid, c] += gp[i, c]
                for k in range(MAX_WIDTH - 1 - t, MAX_WIDTH):
                    for c in range(dim):
                        dw_part[tid, k, c] += gp[i, c] * x[b, t - 3 + k, c]
        for s in range(t0, t1):  # input step s feeds outputs s .. s + 3 through taps 3 .. 0
            i = s - t0
            for c in range(dim):
                dx[b, s, c] = (w4[3, c] * gp[i, c] + w4[2, c] * gp[i + 1, c] + w4[1, c] * gp[i + 2, c]
                               + w4[0, c] * gp[i + 3, c])


def _rows(t: torch.Tensor) -> np.ndarray:
    """A (batch, dim, L) tensor as a C-contiguous fp32 (batch, L, row) NumPy array, row >= dim, whose first dim
    entries of each row are the channels: in place when t is fp32 with the channel axis contiguous and its
    time steps evenly spaced across the batch (Mamba's conv input, a slice of a transposed projection: the
    rest of each row is the other slice); else a channels-last copy. Indexing a 1-D view by computed offsets
    instead kept numba from vectorising (x[at + c] may be negative: a wraparound select per element, 7x
    slower)."""
    t = t.detach()
    batch, dim, seqlen = t.shape
    s_b, _, s_t = t.stride()
    if batch == 1:
        s_b = seqlen * s_t
    end = t.storage_offset() + batch * s_b
    fits = t.numel() > 0 and end <= t.untyped_storage().nbytes() // t.element_size()
    if t.dtype == torch.float32 and t.stride(1) == 1 and s_t >= dim and s_b == seqlen * s_t and fits:
        return t.as_strided((batch, seqlen, s_t), (s_b, s_t, 1)).numpy()
    return t.transpose(1, 2).contiguous().float().numpy()


def _taps(weight: torch.Tensor) -> np.ndarray:
    """(dim, width) weights as (4, dim) fp32 taps, zero-padded on the left (tap 3 multiplies step t)."""
    w = weight.detach().float().numpy()
    w4 = np.zeros((MAX_WIDTH, w.shape[0]), np.float32)
    w4[MAX_WIDTH - w.shape[1]:] = w.T
    return w4


def _jobs(batch: int, seqlen: int) -> tuple[int, int]:
    n_blocks = -(-seqlen // T_BLOCK)
    return batch * n_blocks, n_blocks


class _CausalConv1dCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        batch, dim, seqlen = x.shape
        xs = _rows(x)
        w4 = _taps(weight)
        bias_np = np.zeros(dim, np.float32) if bias is None else bias.detach().float().numpy()
        out = torch.empty(batch, seqlen, dim)
        n_jobs, n_blocks = _jobs(batch, seqlen)
        run_jobs(_conv_fwd, n_jobs, worker_count(n_jobs), xs, w4, bias_np, silu, n_blocks, out.numpy())
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        ctx.set_materialize_grads(False)
        return out.transpose(1, 2).to(x.dtype)

    @staticmethod
    def backward(ctx, gout):
        if gout is None:
            return None, None, None, None
        x, weight, bias = ctx.saved_tensors
        batch, dim, seqlen = x.shape
        xs, gs = _rows(x), _rows(gout)
        w4 = _taps(weight)
        bias_np = np.zeros(dim, np.float32) if bias is None else bias.detach().float().numpy()
        n_jobs, n_blocks = _jobs(batch, seqlen)
        workers = worker_count(n_jobs)
        dx = torch.empty(batch, seqlen, dim)
        dw_part = np.zeros((workers, MAX_WIDTH, dim), np.float32)
        db_part = np.zeros((workers, dim), np.float32)
        run_jobs(_conv_bwd, n_jobs, workers, xs, w4, bias_np, ctx.silu, n_blocks, gs, dx.numpy(), dw_part,
                  db_part, with_tid=True)
        width = weight.shape[1]
        dw = torch.from_numpy(functools.reduce(np.add, dw_part)[MAX_WIDTH - width:].T.copy()).to(weight.dtype)
        db = torch.from_numpy(functools.reduce(np.add, db_part)).to(bias.dtype) if bias is not None else None
        dx = dx.transpose(1, 2).to(x.dtype)
        return (dx if ctx.needs_input_grad[0] else None, dw if ctx.needs_input_grad[1] else None,
                db if ctx.needs_input_grad[2] else None, None)


def causal_conv1d_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, silu: bool) -> torch.Tensor:
    """causal_conv1d with the numba kernels; arguments already checked. Returns (batch, dim, L) in x's dtype,
    a view of a channels-last tensor."""
    return _CausalConv1dCPU.apply(x, weight, bias, silu)
