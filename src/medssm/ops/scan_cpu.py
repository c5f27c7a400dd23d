"""The "cpu" selective-scan backend: fused multithreaded numba kernels for forward and backward.

This module is the host side: it lays the arguments out for the kernels in ``medssm.ops.cpu`` (see that
package for what each file holds), runs them on the worker threads and wraps them in an autograd Function.
Why the kernels are laid out as they are (see DESIGN.md, "Prior art for the scan"):

- The scan is bound by its batch*d*L*N exponentials. numba has no vector math library, so the kernels use
  a polynomial exp (Cody-Waite range reduction, degree-6 Taylor, exponent built by a bit cast) that LLVM
  vectorises; relative error ~2e-7.
- SIMD lanes run across channels, not across the N states: a block of ``LANES`` channels of one batch
  element shares B_t and C_t (selective and grouped modes), so B/C are scalar broadcasts and every lane
  does the same work. Inputs are transposed per chunk of ``CHUNK`` time steps into (time, lane) buffers so
  that each thread's working set stays in L1/L2 (16x16 tiles at a time, by vector shuffles).
- Within a chunk the loops run state n outermost and 4 time steps per pass over the lanes, so a state
  (or, backwards, an adjoint) stays in a register for 4 steps instead of going through memory each step.
- Jobs (batch element, channel block) are split over Python threads running nogil kernels. Blocks are
  LANES channels, or TILE where the narrower blocks share the work among the threads clearly better; the
  backward is compiled once per width, so that its buffers' rows have a constant length. Lanes past the
  end of a block are padded with zeros (exp(0 * A) = 1 and zero input keep their state at zero).
- Forward keeps only the state every 64 steps when gradients are needed (batch, L/64, N, d); the
  backward recomputes each segment's states and decays from its checkpoint, two states at a time, then runs
  their adjoint recurrences lambda_t = gy_t C_t + a_{t+1} lambda_{t+1} backwards through the segment.
  Nothing of size (batch, d, L, N) is ever stored.
- Chunk loads prefetch the rows they will need a few chunks on (software prefetch: one stream per
  channel is more than the hardware prefetcher follows).
- Gradients of parameters shared across jobs (A, D, B, C) go to per-thread partial buffers summed after.

delta's bias and softplus are fused into the kernels (a vectorisable softplus), so the forward allocates
nothing of size (batch, d, L) besides its output. u, delta, z and the output gradient are read in place
when fp32 with their time or channel axis contiguous (Mamba's delta and z are transposed (b, L, d)
tensors); inputs in other dtypes or layouts are converted to contiguous fp32 first. Selective B and C are
read in their own (b, G, N, L) layout. The output follows u's layout, and the gradients of u, delta and z
their inputs' (channels last or contiguous), so that they reach the next op without a transposing copy.
"""

from __future__ import annotations

import functools
import math
import time

import numpy as np
import torch

from .cpu.backward import backward_kernels
from .cpu.forward import forward_kernel
from .cpu.simd import exp_rows
from .cpu.sizes import SEGMENT
from .cpu.workers import block_width, job_lists, run_jobs, worker_count


def exp_throughput(threads: int, size: int = 1 << 14, repeats: int = 200) -> float:
    """Exps per second of the kernels' vectorised exp on ``threads`` threads, each on its own in-cache
    buffer of ``size`` floats (best of 20 runs of about half a millisecond)."""
    x = -np.random.default_rng(0).random((threads, size), dtype=np.float32)
    out = np.empty_like(x)
    run_jobs(exp_rows, threads, threads, x, out, 1)  # compile / load, warm the buffers
    best = math.inf
    for _ in range(20):
        start = time.perf_counter()
        run_jobs(exp_rows, threads, threads, x, out, repeats)
        best = min(best, time.perf_counter() - start)
    return x.size * repeats / best


def _f32(t: torch.Tensor) -> np.ndarray:
    """A float32 C-contiguous NumPy view (a copy only when the dtype or layout asks for one).

    Copies are made by NumPy, not torch: a parallel torch op right before the kernels leaves torch's OpenMP
    workers spinning on the cores the kernels' threads need (see medssm/__init__.py)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16
        t = t.float()
    return np.ascontiguousarray(t.numpy(), dtype=np.float32)


def _sequence(t: torch.Tensor) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A (b, d, L) tensor as a 1-D float32 NumPy view of its memory and its (b, d, L) element strides. No copy
    when it is fp32 with its time or its channel axis contiguous: Mamba's delta and z are transposed
    (b, L, d) tensors, and copying them cost as much as the scan itself. Anything else is copied to a
    contiguous (b, d, L) array."""
    t = t.detach()
    if t.dtype == torch.float32 and 1 in t.stride()[1:] and t.numel() > 0:
        span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True))
        return t.as_strided((span,), (1,)).numpy(), t.stride()
    flat = _f32(t)
    return flat.reshape(-1), tuple(st // 4 for st in flat.strides)


def _new_sequence(batch: int, dim: int, seqlen: int, like: np.ndarray) -> tuple[torch.Tensor, np.ndarray, tuple]:
    """A new fp32 (b, d, L) tensor, channels last when the sequence whose element strides are ``like`` has its
    channel axis contiguous and its time axis not (Mamba's transposed tensors: their gradients and the scan's
    output then reach the next op without a transposing copy), else contiguous; with its 1-D NumPy view and
    its element strides."""
    if like[1] == 1 and like[2] != 1:
        t = torch.empty(batch, seqlen, dim).transpose(1, 2)
    else:
        t = torch.empty(batch, dim, seqlen)
    return t, t.as_strided((t.numel(),), (1,)).numpy(), t.stride()


def _bc_layout(t: torch.Tensor, dim: int) -> tuple[np.ndarray, np.ndarray, int]:
    """B or C as (selective (b, G, N, L), fixed (d, N), channels per group); the unused one is empty. The
    selective layout is the caller's, so a contiguous fp32 B or C is read in place; each state's steps are
    contiguous, which is how the kernels read them."""
    if t.dim() == 2:
        return np.zeros((0, 0, 0, 0), np.float32), _f32(t), dim
    g = t.unsqueeze(1) if t.dim() == 3 else t
    return _f32(g), np.zeros((0, 0), np.float32), dim // g.shape[1]


class ScanPlan:
    """The kernels' inputs as float32 NumPy arrays (views of the torch tensors where possible), for
    :func:`scan_forward` and :func:`scan_backward`. Arguments as selective_scan's, already checked: u, delta,
    z (b, d, L); A (d, N); B, C (d, N), (b, N, L) or (b, G, N, L); D, delta_bias (d,) or None."""

    def __init__(self, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                 delta_softplus: bool):
        batch, dim, seqlen = u.shape
        self.shape = (batch, dim, seqlen, A.shape[1])
        self.Bsel, self.Bfix, self.cpg_b = _bc_layout(B, dim)
        self.Csel, self.Cfix, self.cpg_c = _bc_layout(C, dim)
        zeros = np.zeros(dim, np.float32)
        bias = zeros if delta_bias is None else _f32(delta_bias)
        # u, delta, z and the backward's output gradient as 1-D views with their strides in rows 0-3; rows 4-6
        # hold the strides of the outputs: the forward's out or the backward's du (laid out as u), ddelta, dz;
        # row 7 those of the output before the gate that the forward saves for the backward
        self.strides = np.zeros((8, 3), np.int64)
        seqs = []
        for row, t in enumerate((u, delta, z)):
            flat, strides = _sequence(t) if t is not None else (np.zeros(0, np.float32), (0, 0, 0))
            seqs.append(flat)
            self.strides[row] = strides
        self.args = (seqs[0], seqs[1], bias, bool(delta_softplus), _f32(A), self.Bsel, self.Bfix,
                     self.Csel, self.Cfix, zeros if D is None else _f32(D), seqs[2], self.strides)
        self.has_z = z is not None
        chan_per_group = math.gcd(self.cpg_b, self.cpg_c)
        # one width for both passes: the same channels per job (see block_width)
        self.lanes = block_width(batch, dim, chan_per_group, torch.get_num_threads())
        self.jobs = job_lists(batch, dim, chan_per_group, self.lanes)
        self.n_jobs = len(self.jobs[0])


def scan_forward(plan: ScanPlan, save: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Run the forward kernel: out (b, d, L) fp32 laid out as u, last state (b, d, N), and with ``save`` what
    the backward needs: the chunk-start states and, with z, the output before the gate (as mamba_ssm's kernel
    saves it; the backward's state recomputation then has one load, multiply-add and store less per state and
    step)."""
    batch, dim, seqlen, d_state = plan.shape
    out, out_np, plan.strides[4] = _new_sequence(batch, dim, seqlen, plan.strides[0])
    last = torch.empty(batch, dim, d_state)
    n_segments = -(-seqlen // SEGMENT)
    ckpt = torch.empty(batch, n_segments, d_state, dim) if save else torch.empty(0, 0, 0, 0)
    if save and plan.has_z:
        y, y_np, plan.strides[7] = _new_sequence(batch, dim, seqlen, plan.strides[0])
    else:
        y, y_np = torch.empty(0), np.zeros(0, np.float32)
    run_jobs(forward_kernel, plan.n_jobs, worker_count(plan.n_jobs), *plan.args, *plan.jobs, plan.cpg_b,
             plan.cpg_c, plan.lanes, seqlen, out_np, last.numpy(), ckpt.numpy(), save, y_np)
    return out, last, (ckpt, y)


def scan_backward(plan: ScanPlan, saved: tuple[torch.Tensor, torch.Tensor], gout: torch.Tensor,
                  glast: torch.Tensor | None = None) -> dict[str, torch.Tensor | None]:
    """Run the backward kernel for output gradient ``gout`` (b, d, L) and last-state gradient ``glast``
    (b, d, N) or None; returns fp32 gradients keyed by argument name (z: None when absent), those of u, delta
    and z laid out as their inputs (see _new_sequence)."""
    batch, dim, seqlen, d_state = plan.shape
    workers = worker_count(plan.n_jobs)
    grads, flats = {"z": None}, {"z": np.zeros(0, np.float32)}
    for row, name in enumerate(("u", "delta", "z")):
        if name != "z" or plan.has_z:
            grads[name], flats[name], plan.strides[4 + row] = _new_sequence(batch, dim, seqlen, plan.strides[row])
    # per-worker partial sums in NumPy (zero pages from the OS; a torch fill would be a parallel op)
    parts = {"A": np.zeros((workers, dim, d_state), np.float32), "D": np.zeros((workers, dim), np.float32),
             "delta_bias": np.zeros((workers, dim), np.float32)}
    for name, sel, fix in (("B", plan.Bsel, plan.Bfix), ("C", plan.Csel, plan.Cfix)):
        parts[name] = np.zeros((workers, *(sel.shape if sel.size else fix.shape)), np.float32)
    empty5, empty3 = np.zeros((0,) * 5, np.float32), np.zeros((0,) * 3, np.float32)
    b_sel, c_sel = bool(plan.Bsel.size), bool(plan.Csel.size)
    glast_np = empty3 if glast is None else _f32(glast)
    gout_flat, plan.strides[3] = _sequence(gout)
    ckpt, y = saved
    y_flat = y.as_strided((y.numel(),), (1,)).numpy()  # laid out as the forward's out (strides[7])
    run_jobs(backward_kernels[plan.lanes], plan.n_jobs, workers, *plan.args, gout_flat, glast_np, ckpt.numpy(),
             y_flat, *plan.jobs, plan.cpg_b, plan.cpg_c, plan.lanes, seqlen, flats["u"], flats["delta"], flats["z"],
             parts["A"], parts["D"], parts["delta_bias"],
             parts["B"] if b_sel else empty5, empty3 if b_sel else parts["B"],
             parts["C"] if c_sel else empty5, empty3 if c_sel else parts["C"],
             with_tid=True)
    for name, part in parts.items():
        total = torch.from_numpy(functools.reduce(np.add, part))
        grads[name] = total
    return grads


_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        plan = ScanPlan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        out, last, saved = scan_forward(plan, save=any(ctx.needs_input_grad))
        inputs = (u, delta, A, B, C, D, z, delta_bias)
        # Everything the backward needs goes through save_for_backward (the plan is rebuilt from it): autograd
        # then frees it as soon as this node's backward ran, activation checkpointing can drop and recompute
        # it, and an in-place change to an input since the forward is refused, as for torch's own ops.
        ctx.save_for_backward(*inputs, *saved)
        ctx.delta_softplus = delta_softplus
        ctx.like = [(t.dtype, t.shape) if t is not None else None for t in inputs]
        ctx.set_materialize_grads(False)
        return out.to(u.dtype), last

    @staticmethod
    def backward(ctx, gout, glast):
        if gout is None and glast is None:
            return (None,) * 9
        *inputs, ckpt, y = ctx.saved_tensors  # raises if an input was modified in place since the forward
        plan = ScanPlan(*inputs, ctx.delta_softplus)
        if y.numel():
            plan.strides[7] = y.stride()  # the layout scan_forward gave the saved output before the gate
        batch, dim, seqlen, _ = plan.shape
        gout = torch.zeros(batch, dim, seqlen) if gout is None else gout
        grads = scan_backward(plan, (ckpt, y), gout, glast)
        result = []
        for name, like, needed in zip(_NAMES, ctx.like, ctx.needs_input_grad, strict=False):
            g = grads[name]
            result.append(g.reshape(like[1]).to(like[0]) if needed and like is not None else None)
        return (*result, None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Selective scan with the fused numba kernels; shapes and semantics as medssm.ops.selective_scan."""
    out, last = _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return (out, last) if return_last_state else out
