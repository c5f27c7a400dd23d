"""The public selective-scan entry point and its backend dispatch.

``selective_scan`` has mamba_ssm's signature and semantics exactly; ``backend`` picks the implementation:

- ``"reference"``: plain PyTorch loop over time (the oracle; slow).
- ``"torch"``: chunked pure PyTorch; any device, differentiable, traceable and exportable.
- ``"cpu"``: fused multithreaded numba kernels for forward and backward (CPU tensors).
- ``"triton"``: fused Triton kernels for forward and backward (CUDA tensors, ``pip install triton``; CPU
  tensors only under Triton's interpreter, ``TRITON_INTERPRET=1``, for tests).
- ``"auto"``: the fastest available for the tensors' device; the choice is logged at DEBUG level and
  shown by ``medssm info``. Asking for a backend that cannot run here is an error, never a silent fallback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator

import torch

from ._checks import check_scan_args

logger = logging.getLogger(__name__)

BACKENDS = ("reference", "torch", "cpu", "triton")


class ScanFlops:
    """Running total of selective-scan FLOPs inside :func:`count_scan_flops`."""

    def __init__(self) -> None:
        self.flops = 0


_flop_counters: list[ScanFlops] = []


@contextlib.contextmanager
def count_scan_flops() -> Iterator[ScanFlops]:
    """Count the FLOPs of every selective_scan call in the block: 9 per (batch, d, L, N) element of the
    recurrence (exp, the two products of the update, the add, and the C product and sum), plus one per
    (batch, d, L) element each for the D skip and the z gate (mamba_ssm's convention). Fused kernels are
    invisible to torch's FlopCounterMode, so model FLOP counts add this."""
    counter = ScanFlops()
    _flop_counters.append(counter)
    try:
        yield counter
    finally:
        _flop_counters.remove(counter)


def numba_available() -> bool:
    """Whether numba is installed, which the "cpu" backends of the scan and the causal conv need."""
    return importlib.util.find_spec("numba") is not None


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """Backends that can run on ``device``, fastest first (the first is what ``"auto"`` picks)."""
    from .scan_triton import triton_runs_on

    device = torch.device(device)
    names = []
    if device.type == "cuda" and triton_runs_on(device):
        names.append("triton")
    if device.type == "cpu" and numba_available():
        names.append("cpu")
    names += ["torch", "reference"]
    if device.type == "cpu" and triton_runs_on(device):
        names.append("triton")  # the interpreter: last, it is for tests
    return names


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``backend`` (possibly ``"auto"``) into a concrete backend name for ``device``, or raise."""
    if backend == "auto":
        chosen = available_backends(device)[0]
        logger.debug("selective_scan backend='auto' chose %r for device %s", chosen, device)
        return chosen
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in available_backends(device):
        if backend == "triton":
            reason = ("triton is not installed (pip install 'medssm[gpu]')" if device.type == "cuda" else
                      "it needs CUDA tensors (or TRITON_INTERPRET=1 for Triton's interpreter on CPU tensors)")
        else:
            reason = "it needs CPU tensors" if backend == "cpu" and device.type != "cpu" else "numba is not installed"
        raise ValueError(f"selective_scan backend {backend!r} cannot run on {device}: {reason}. "
                         f"Available here: {available_backends(device)}")
    return backend


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                   delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, *, backend: str = "auto"):
    """Selective scan (Mamba's S6 recurrence) with mamba_ssm's semantics.

    Args:
        u, delta: (batch, d, L) inputs and time steps.
        A: (d, N) real state matrix (diagonal per channel), usually ``-exp(A_log)``.
        B, C: (d, N) fixed, (batch, N, L) selective, or (batch, G, N, L) grouped (channel block g of d/G
            channels uses group g).
        D: optional (d,) skip. z: optional (batch, d, L) gate. delta_bias: optional (d,).
        delta_softplus: apply softplus to delta + delta_bias.
        return_last_state: also return the final state (batch, d, N) in fp32.
        backend: "auto", "reference", "torch", "cpu" or "triton".

    Computes in fp32: h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t; y_t = <h_t, C_t>;
    out = (y + D u) * silu(z), cast back to u's dtype.
    """
    check_scan_args(u, delta, A, B, C, D, z, delta_bias)
    if _flop_counters:
        batch, d, length = u.shape
        flops = 9 * batch * d * length * A.shape[1] + batch * d * length * ((D is not None) + (z is not None))
        for counter in _flop_counters:
            counter.flops += flops
    name = resolve_backend(backend, u.device)
    if name == "reference":
        from .scan_reference import selective_scan_reference as fn
    elif name == "torch":
        from .scan_torch import selective_scan_torch as fn
    elif name == "triton":
        from .scan_triton import selective_scan_triton as fn
    else:
        from .scan_cpu import selective_scan_cpu as fn
    return fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
              return_last_state=return_last_state)
