"""The reference selective scan against an independent float64 NumPy loop, and its gradients by gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scan_inputs import Case, make_inputs

from medssm.ops import selective_scan

TINY = Case(batch=2, dim=4, d_state=3, seqlen=6)


def coefficient(M: np.ndarray, b: int, c: int, n: int, t: int, dim: int) -> float:
    """B or C for batch b, channel c, state n, step t: fixed (d, N), selective (batch, N, L) or grouped."""
    if M.ndim == 2:
        return M[c, n]
    if M.ndim == 3:
        return M[b, n, t]
    channels_per_group = dim // M.shape[1]
    return M[b, c // channels_per_group, n, t]


def numpy_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The selective scan written out one channel, one state and one step at a time, in float64."""
    batch, dim, seqlen = u.shape
    d_state = A.shape[1]
    out = np.zeros((batch, dim, seqlen))
    last_state = np.zeros((batch, dim, d_state))
    for b in range(batch):
        for c in range(dim):
            h = np.zeros(d_state)
            for t in range(seqlen):
                dt = delta[b, c, t] + (0.0 if delta_bias is None else delta_bias[c])
                if delta_softplus:
                    dt = math.log1p(math.exp(dt))
                y = 0.0
                for n in range(d_state):
                    h[n] = math.exp(dt * A[c, n]) * h[n] + dt * coefficient(B, b, c, n, t, dim) * u[b, c, t]
                    y += h[n] * coefficient(C, b, c, n, t, dim)
                if D is not None:
                    y += D[c] * u[b, c, t]
                if z is not None:
                    y *= z[b, c, t] / (1.0 + math.exp(-z[b, c, t]))
                out[b, c, t] = y
            last_state[b, c] = h
    return out, last_state


REFERENCE_CASES = [
    TINY,
    Case(batch=2, dim=4, d_state=3, seqlen=6, b_mode="fixed", c_mode="fixed"),
    Case(batch=2, dim=4, d_state=3, seqlen=6, b_mode="grouped", c_mode="grouped", groups=2),
    Case(batch=2, dim=4, d_state=3, seqlen=6, b_mode="grouped", c_mode="selective", groups=4),
    Case(batch=2, dim=4, d_state=3, seqlen=6, b_mode="fixed", c_mode="grouped", groups=2),
    Case(batch=2, dim=4, d_state=3, seqlen=6, has_D=False, has_z=False),
    Case(batch=2, dim=4, d_state=3, seqlen=6, has_delta_bias=False, delta_softplus=False),
    Case(batch=2, dim=4, d_state=3, seqlen=6, delta_softplus=False),
    Case(batch=1, dim=3, d_state=1, seqlen=1),
    Case(batch=2, dim=4, d_state=3, seqlen=6, noncontiguous=True),
]


@pytest.mark.parametrize("case", REFERENCE_CASES, ids=lambda case: case.id)
def test_reference_matches_numpy_loop(case):
    kwargs, _ = make_inputs(case)
    out, last_state = selective_scan(**{**kwargs, "return_last_state": True}, backend="reference")
    arrays = {name: value.detach().double().numpy() if isinstance(value, torch.Tensor) else value
              for name, value in kwargs.items() if name != "return_last_state"}
    expected_out, expected_state = numpy_scan(**arrays)
    assert out.dtype == torch.float32 and last_state.dtype == torch.float32
    assert last_state.shape == (case.batch, case.dim, case.d_state)
    # The reference computes in float32: compare at float32 accuracy.
    torch.testing.assert_close(out.detach().double(), torch.from_numpy(expected_out), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last_state.detach().double(), torch.from_numpy(expected_state),
                               rtol=1e-5, atol=1e-5)


def test_reference_without_last_state_returns_the_output_only():
    kwargs, _ = make_inputs(TINY)
    out = selective_scan(**{**kwargs, "return_last_state": False}, backend="reference")
    out_with_state, _ = selective_scan(**{**kwargs, "return_last_state": True}, backend="reference")
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, out_with_state, rtol=0, atol=0)


@pytest.mark.parametrize("itype", [torch.float16, torch.bfloat16])
def test_reference_half_inputs_keep_their_dtype(itype):
    case = Case(batch=2, dim=4, d_state=3, seqlen=6, itype=itype)
    kwargs, _ = make_inputs(case)
    out, last_state = selective_scan(**kwargs, backend="reference")
    arrays = {name: value.detach().double().numpy() for name, value in kwargs.items()
              if isinstance(value, torch.Tensor)}
    expected_out, expected_state = numpy_scan(**arrays, delta_softplus=case.delta_softplus)
    assert out.dtype == itype and last_state.dtype == torch.float32
    # Computed in float32 from the half inputs; only the output is rounded to the half dtype (torch's default
    # tolerances for that dtype allow the rounding of a float32 and a float64 result to differ by one step).
    torch.testing.assert_close(last_state.double(), torch.from_numpy(expected_state), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, torch.from_numpy(expected_out).to(itype))


@pytest.mark.parametrize("b_mode,c_mode,groups", [("selective", "selective", 1), ("fixed", "grouped", 2),
                                                  ("grouped", "fixed", 2)])
def test_reference_gradcheck(b_mode, c_mode, groups):
    case = Case(batch=1, dim=2, d_state=2, seqlen=4, b_mode=b_mode, c_mode=c_mode, groups=groups,
                itype=torch.float64)
    kwargs, _ = make_inputs(case)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    inputs = tuple(kwargs[name].detach().double().requires_grad_() for name in names)

    def scan(*tensors):
        return selective_scan(*tensors, delta_softplus=True, return_last_state=True, backend="reference")

    # Float64 inputs, but the reference computes in float32 (as mamba_ssm's does): finite differences need a
    # step far above float32's rounding, and tolerances to match.
    assert torch.autograd.gradcheck(scan, inputs, eps=1e-3, atol=1e-3, rtol=1e-2)
