"""The "triton" backends of selective_scan and selective_state_update: host side and autograd Function.

Triton compiles its kernels at run time, so this backend brings mamba_ssm's fused scan to CUDA (and ROCm)
GPUs with ``pip install triton`` (``medssm[gpu]``), no CUDA build. The kernels are in
:mod:`medssm.ops.triton_kernels`; what they do (Gu and Dao, 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces", arXiv:2312.00752, the S6 recurrence with mamba_ssm's semantics):

- Forward, one program per (batch, block of channels): u, delta, z, B_t and C_t are read once, softplus,
  exp(delta A) and the fp32 state stay in registers, the output is written once (in u's dtype). When a
  gradient is needed it also stores the state before every chunk of ``CHUNK`` steps: a
  (batch, d, ceil(L / CHUNK), N) tensor, never (batch, d, L, N).
- Backward, chunks last to first: recompute the chunk's states from its checkpoint into a per-program
  (CHUNK, BLOCK_D, BLOCK_N) workspace (small enough to stay in cache), then run the adjoint backwards through
  the chunk and form du, ddelta, dz and the partial sums of dA, dB, dC, dD, ddelta_bias. Like mamba_ssm's
  CUDA kernel it saves only the inputs and the checkpoints; unlike it, the chunk runs sequentially in time
  inside a program (mamba_ssm scans a chunk of 2048 steps in parallel across a thread block), so
  parallelism comes from batch * d / BLOCK_D programs and the N lanes of each.

On CPU tensors the same kernels run under Triton's interpreter: slow, and meant for the parity tests.
``TRITON_INTERPRET=1`` in the environment opts in, and must already be set when triton is first imported
(triton fixes the mode of its own library then; see :func:`triton_interprets`).

Block sizes (``BLOCK_D``, ``CHUNK``, warps) are chosen for a plausible register budget and are not tuned
on a GPU yet.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

BLOCK_D = 16  # channels per program (fewer where a group of grouped B/C has fewer)
CHUNK = 32  # steps between the forward's state checkpoints; the backward's workspace holds one chunk
NUM_WARPS = 4

def triton_importable() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    """TRITON_INTERPRET set to a true value: the opt-in for running the kernels on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "on", "yes")


def triton_runs_on(device: torch.device) -> bool:
    """Whether the triton backends can run on ``device``: CUDA (ROCm builds report "cuda" too) with
    triton installed, or CPU tensors through the interpreter when TRITON_INTERPRET=1."""
    if device.type == "cuda":
        return triton_importable() and torch.cuda.is_available()
    return device.type == "cpu" and interpreter_enabled() and triton_importable()


def triton_interprets() -> bool:
    """Whether the imported triton runs kernels in its interpreter: triton decorates its own library (tl.sum,
    tl.sigmoid, ...) at import, in the mode TRITON_INTERPRET then asks for, so the mode is fixed per process."""
    import triton.language.standard as standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(standard.sigmoid, InterpretedFunction)


def kernels(device: torch.device) -> ModuleType:
    """The kernels module, after checking that triton can run them on ``device`` in this process."""
    if device.type == "cpu" and not triton_interprets():
        raise RuntimeError("the triton backend runs on CPU tensors only under Triton's interpreter, and triton "
                           "was imported without it: set TRITON_INTERPRET=1 before triton is first imported")
    from . import triton_kernels

    return triton_kernels


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def block_d(dim: int, groups: list[int]) -> int:
    """Channels per program: BLOCK_D, halved until it divides the channels of each group (G > 1), so that
    no block straddles two groups."""
    width = min(BLOCK_D, next_power_of_2(dim))
    for g in groups:
        while (dim // g) % width:
            width //= 2
    return width


def bc_layout(t: torch.Tensor) -> tuple[bool, int, tuple[int, int, int, int, int]]:
    """(fixed, G, strides over (batch, group, channel, n, L)) of B or C; selective is G = 1."""
    if t.dim() == 2:
        return True, 1, (0, 0, t.stride(0), t.stride(1), 0)
    if t.dim() == 3:
        return False, 1, (t.stride(0), 0, 0, t.stride(1), t.stride(2))
    return False, t.shape[1], (t.stride(0), t.stride(1), 0, t.stride(2), t.stride(3))


def _seq(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


class _Call:
    """One selective_scan call's sizes, B/C layouts and launch grid, shared by the two kernels."""

    def __init__(self, u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> None:
        self.batch, self.dim, self.seqlen = u.shape
        self.d_state = A.shape[1]
        self.b_fixed, self.b_groups, self.b_strides = bc_layout(B)
        self.c_fixed, self.c_groups, self.c_strides = bc_layout(C)
        self.block_d = block_d(self.dim, [g for g in (self.b_groups, self.c_groups) if g > 1])
        self.block_n = next_power_of_2(self.d_state)
        self.n_chunks = -(-self.seqlen // CHUNK)
        self.grid = (self.batch, -(-self.dim // self.block_d))

    def sizes(self) -> tuple[int, ...]:
        return (self.dim, self.seqlen, self.d_state, self.n_chunks, self.dim // self.b_groups,
                self.dim // self.c_groups)

    def meta(self, **flags: bool) -> dict:
        return dict(B_FIXED=self.b_fixed, C_FIXED=self.c_fixed, CHUNK=CHUNK, BLOCK_D=self.block_d,
                    BLOCK_N=self.block_n, num_warps=NUM_WARPS, **flags)


def scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, save: bool):
    """Launch the forward kernel. Returns out (u's shape, layout and dtype), the last state (batch, d, N)
    fp32 and, with ``save``, the chunk checkpoints (batch, d, n_chunks, N) fp32 (else None)."""
    call = _Call(u, A, B, C)
    out = torch.empty_like(u)
    last = u.new_empty(call.batch, call.dim, call.d_state, dtype=torch.float32)
    ckpt = u.new_empty(call.batch, call.dim, call.n_chunks, call.d_state, dtype=torch.float32) if save else None
    zz = u if z is None else z
    kernels(u.device).scan_fwd_kernel[call.grid](
        u, delta, A, B, C, u if D is None else D, zz, u if delta_bias is None else delta_bias, out, last,
        last if ckpt is None else ckpt, *call.sizes(), *_seq(u), *_seq(delta), *_seq(zz), *_seq(out),
        A.stride(0), A.stride(1), *call.b_strides, *call.c_strides,
        **call.meta(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                    SOFTPLUS=delta_softplus, SAVE=save))
    return out, last, ckpt


def _coef_grad(fixed: bool, groups: int, call: _Call, like: torch.Tensor) -> torch.Tensor:
    """The kernel's buffer for dB or dC: per-batch partial sums (batch, d, N) when fixed, else a zeroed
    (batch, G, N, L) that the channel blocks add into."""
    if fixed:
        return like.new_empty(call.batch, call.dim, call.d_state, dtype=torch.float32)
    return like.new_zeros(call.batch, groups, call.d_state, call.seqlen, dtype=torch.float32)


def _coef_out(grad: torch.Tensor, fixed: bool, like: torch.Tensor) -> torch.Tensor:
    grad = grad.sum(0) if fixed else grad.reshape(like.shape)
    return grad.to(like.dtype)


def scan_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, ckpt, g_out, g_last):
    """Launch the backward kernel; returns the gradients of (u, delta, A, B, C, D, z, delta_bias), each in
    its input's shape and dtype (None for the optional inputs that were not given)."""
    call = _Call(u, A, B, C)
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = None if z is None else torch.empty_like(z)
    g = torch.zeros_like(u) if g_out is None else g_out
    f32 = {"dtype": torch.float32}
    dA = u.new_empty(call.batch, call.dim, call.d_state, **f32)
    dB = _coef_grad(call.b_fixed, call.b_groups, call, u)
    dC = _coef_grad(call.c_fixed, call.c_groups, call, u)
    dD = u.new_empty(call.batch, call.dim, **f32)
    d_bias = u.new_empty(call.batch, call.dim, **f32)
    workspace = u.new_empty(call.grid[0] * call.grid[1] * CHUNK * call.block_d * call.block_n, **f32)
    glast = dA if g_last is None else g_last.float().contiguous()
    zz, dzz = (u, du) if z is None else (z, dz)
    kernels(u.device).scan_bwd_kernel[call.grid](
        u, delta, A, B, C, u if D is None else D, zz, u if delta_bias is None else delta_bias, g, glast, ckpt,
        workspace, du, ddelta, dzz, dA, dB, dC, dD, d_bias, *call.sizes(), call.b_groups, call.c_groups,
        *_seq(u), *_seq(delta), *_seq(zz), *_seq(g), A.stride(0), A.stride(1), *call.b_strides,
        *call.c_strides,
        **call.meta(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                    SOFTPLUS=delta_softplus, HAS_GLAST=g_last is not None))
    return (du, ddelta, dA.sum(0).to(A.dtype), _coef_out(dB, call.b_fixed, B), _coef_out(dC, call.c_fixed, C),
            None if D is None else dD.sum(0).to(D.dtype), dz,
            None if delta_bias is None else d_bias.sum(0).to(delta_bias.dtype))


class _TritonScanFn(torch.autograd.Function):
    """The fused scan (bias/softplus, recurrence, D skip, gate) with its fused backward. Saves the inputs and
    the chunk checkpoints only."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        out, last, ckpt = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save=True)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.delta_softplus = delta_softplus
        ctx.set_materialize_grads(False)
        return out, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out, g_last):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        grads = scan_backward(u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, ckpt, g_out, g_last)
        return (*grads, None)


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                          C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                          delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                          return_last_state: bool = False):
    """Selective scan by the fused Triton kernels. Shapes and semantics as :func:`medssm.ops.selective_scan`
    (arguments already checked): out (batch, d, L) in u's dtype and layout, last state (batch, d, N) fp32.
    Any strides are read in place; D and delta_bias are made contiguous (d values)."""
    D = None if D is None else D.contiguous()
    delta_bias = None if delta_bias is None else delta_bias.contiguous()
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        out, last = _TritonScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    else:  # inference: no autograd node, and no checkpoints (the Function would save them under no_grad too)
        out, last, _ = scan_forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, save=False)
    return (out, last) if return_last_state else out


def selective_state_update_triton(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step by the Triton kernel, arguments as :func:`medssm.ops.selective_state_update` (already
    checked): state updated in place, out returned shaped like x in x's dtype."""
    heads = state.dim() == 4
    if not heads:  # a head axis of size 1 with stride 0: one kernel serves both layouts
        state, x, dt, B, C = (t.unsqueeze(1) for t in (state, x, dt, B, C))
        A = A.unsqueeze(0)
        z = None if z is None else z.unsqueeze(1)
        D = None if D is None else D.unsqueeze(0)
        dt_bias = None if dt_bias is None else dt_bias.unsqueeze(0)
    batch, nheads, dim, d_state = state.shape
    out = torch.empty_like(x)
    zz, DD, bb = (x if z is None else z), (A if D is None else D), (A if dt_bias is None else dt_bias)
    width = min(BLOCK_D, next_power_of_2(dim))
    kernels(state.device).state_update_kernel[(batch * nheads, -(-dim // width))](
        state, x, dt, A, B, C, DD, zz, bb, out, nheads, dim, d_state, nheads // B.shape[1],
        *state.stride(), *x.stride(), *dt.stride(), *zz.stride(), *out.stride(), *A.stride(), *B.stride(),
        *C.stride(), DD.stride(0), DD.stride(1), bb.stride(0), bb.stride(1),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        BLOCK_D=width, BLOCK_N=next_power_of_2(d_state), num_warps=NUM_WARPS)
    return out if heads else out.squeeze(1)
