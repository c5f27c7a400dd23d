"""Every fast selective-scan backend against the reference loop: outputs, last state and all gradients.

Tolerances are mamba_ssm's (tests/ops/test_selective_scan.py); the full mamba_ssm grid runs with
``pytest -m slow``, a representative part of it by default.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from scan_inputs import Case, make_inputs

from medssm.ops import available_backends, selective_scan

FAST = ["torch", "cpu"]

# (rtol, atol) of the outputs for each input dtype, as in mamba_ssm's test.
OUTPUT_TOLERANCES = {torch.float32: (6e-4, 2e-3), torch.float16: (3e-3, 5e-3), torch.bfloat16: (3e-2, 5e-2)}


def tolerances(case: Case) -> dict[str, tuple[float, float]]:
    """(rtol, atol) per compared tensor, following mamba_ssm's test."""
    rtol, atol = OUTPUT_TOLERANCES[case.itype]
    rtolw, atolw = 1e-3, 1e-3  # weights: A, fixed B/C, D, z, delta_bias
    if case.has_z:  # mamba_ssm: with z the errors on the weights are higher
        rtolw, atolw = max(rtolw, rtol), max(atolw, atol)

    def coefficients(mode):
        return (rtolw, atolw) if mode == "fixed" else (rtol, atol)

    return {
        "out": (rtol, atol),
        "last_state": (rtol, atol),
        "grad_u": (2 * rtol, 2 * atol),
        "grad_delta": (5 * rtol, 10 * atol),
        "grad_A": (rtolw, 5 * atolw),
        "grad_B": coefficients(case.b_mode),
        "grad_C": coefficients(case.c_mode),
        "grad_D": (rtolw, atolw),
        "grad_z": (rtolw, atolw),
        "grad_delta_bias": (rtolw, atolw),
    }


def run_scan(case: Case, backend: str) -> dict[str, torch.Tensor | None]:
    """Forward and backward of ``case`` on ``backend``: the output, last state and every input's gradient."""
    kwargs, leaves = make_inputs(case)
    result = selective_scan(**kwargs, backend=backend)
    assert isinstance(result, tuple) == case.return_last_state, f"{backend}: wrong return type {type(result)}"
    out, last_state = result if case.return_last_state else (result, None)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    out.backward(grad_out)
    results = {"out": out.detach(), "last_state": None if last_state is None else last_state.detach()}
    results.update({f"grad_{name}": leaf.grad for name, leaf in leaves.items()})
    return results


@functools.cache
def reference_results(case: Case) -> dict[str, torch.Tensor | None]:
    """The reference's results, computed once per case and shared by all the fast backends."""
    return run_scan(case, "reference")


def assert_results_match(actual: dict, expected: dict, case: Case) -> None:
    tol = tolerances(case)
    for name, want in expected.items():
        got = actual[name]
        if want is None:
            assert got is None, f"{name}: expected None"
            continue
        assert got is not None, f"{name}: the backend gave none"
        rtol, atol = tol[name]
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


MAMBA_GRID = [Case(seqlen=seqlen, b_mode=mode, c_mode=mode, groups=groups)
              for seqlen in (128, 256, 512, 1024, 2048, 4096)
              for groups, mode in ((1, "selective"), (2, "grouped"))]
DEFAULT_GRID = [case for case in MAMBA_GRID if case.seqlen in (128, 1024)]

S4D = {"a_init": "s4d", "d_state": 16}  # Mamba's A = -(1..N): fast decays, for the chunking of "torch"

DEFAULT_CASES = [
    *DEFAULT_GRID,
    # sequence lengths: a single step and primes (no power-of-two chunking)
    Case(seqlen=1),
    Case(seqlen=7, b_mode="grouped", c_mode="grouped", groups=2),
    Case(seqlen=61),
    Case(seqlen=257, b_mode="grouped", c_mode="grouped", groups=2),
    # B and C modes, alone and mixed
    Case(b_mode="fixed", c_mode="fixed"),
    Case(b_mode="fixed", c_mode="fixed", has_z=False),  # the tighter weight tolerances
    Case(b_mode="fixed", c_mode="selective"),
    Case(b_mode="selective", c_mode="fixed"),
    Case(b_mode="grouped", c_mode="grouped", groups=1),
    Case(b_mode="grouped", c_mode="selective", groups=2),
    Case(b_mode="selective", c_mode="grouped", groups=2),
    Case(b_mode="fixed", c_mode="grouped", groups=2),
    Case(b_mode="grouped", c_mode="grouped", groups=4),  # one channel per group
    # each option switched off alone, then all of them
    Case(has_D=False),
    Case(has_z=False),
    Case(has_delta_bias=False),
    Case(delta_softplus=False),
    Case(return_last_state=False),
    Case(has_D=False, has_z=False, has_delta_bias=False, delta_softplus=False, return_last_state=False),
    # non-contiguous u, delta, z, B and C
    Case(noncontiguous=True),
    Case(noncontiguous=True, b_mode="grouped", c_mode="grouped", groups=2),
    Case(noncontiguous=True, b_mode="fixed", c_mode="fixed"),
    # half-precision inputs (the output keeps u's dtype)
    Case(itype=torch.float16),
    Case(itype=torch.bfloat16),
    Case(itype=torch.float16, b_mode="fixed", c_mode="grouped", groups=2),
    # widths that are not multiples of 16, N at its small and usual ends
    Case(batch=1, dim=5, d_state=1, seqlen=100),
    Case(dim=5, d_state=16, seqlen=100),
    Case(dim=33, d_state=1, seqlen=100),
    Case(dim=33, d_state=16, seqlen=100, b_mode="grouped", c_mode="grouped", groups=3),
    Case(dim=64, d_state=16, seqlen=100),
    # the cpu backend moves whole 16-lane x 16-step tiles with vector shuffles and the rest element-wise:
    # blocks of 32 + 16 lanes, and 25-lane group blocks (one tile + 9 lanes), on strided inputs too
    Case(dim=48, d_state=4, seqlen=37, noncontiguous=True),
    Case(dim=50, d_state=4, seqlen=37, b_mode="grouped", c_mode="grouped", groups=2),
    Case(dim=96, d_state=4, seqlen=37),  # on 2 threads the forward splits 96 channels into six 16-lane jobs
    # realistic decays: fast (Mamba's A, large delta) and slow (tiny delta, long memory)
    Case(seqlen=512, delta_scale=2.0, **S4D),
    Case(seqlen=512, delta_scale=1e-3, delta_softplus=False, has_delta_bias=False),
]

SLOW_CASES = [
    *MAMBA_GRID,
    Case(seqlen=4096, delta_scale=2.0, **S4D),
    Case(seqlen=4096, delta_scale=1e-3, delta_softplus=False, has_delta_bias=False),
    Case(dim=64, d_state=16, seqlen=2048, b_mode="grouped", c_mode="grouped", groups=4),
]

PARITY_CASES = [pytest.param(case, id=case.id) for case in DEFAULT_CASES] + [
    pytest.param(case, id=f"slow-{case.id}", marks=pytest.mark.slow) for case in SLOW_CASES]


@pytest.mark.parametrize("case", PARITY_CASES)
@pytest.mark.parametrize("backend", FAST)
def test_matches_reference(backend, case):
    results = run_scan(case, backend)
    assert results["out"].dtype == case.itype
    if case.return_last_state:
        assert results["last_state"].dtype == torch.float32
        assert results["last_state"].shape == (case.batch, case.dim, case.d_state)
    assert_results_match(results, reference_results(case), case)


def test_auto_is_first_available_backend(caplog):
    kwargs, _ = make_inputs(Case(seqlen=64))
    first = available_backends("cpu")[0]
    with caplog.at_level(logging.DEBUG, logger="medssm"):
        out_auto, state_auto = selective_scan(**kwargs, backend="auto")
    out_first, state_first = selective_scan(**kwargs, backend=first)
    torch.testing.assert_close(out_auto, out_first, rtol=0, atol=0)
    torch.testing.assert_close(state_auto, state_first, rtol=0, atol=0)
    assert repr(first) in caplog.text, "backend='auto' must log the backend it chose"


def test_available_backends():
    assert set(available_backends("cpu")) == {"reference", "torch", "cpu"}
    assert "cpu" not in available_backends("meta")


def test_unknown_backend_is_an_error():
    kwargs, _ = make_inputs(Case(seqlen=8))
    with pytest.raises(ValueError, match="backend"):
        selective_scan(**kwargs, backend="no-such-backend")


def test_cpu_backend_refuses_other_devices():
    kwargs, _ = make_inputs(Case(seqlen=8), device="meta")
    with pytest.raises(ValueError, match="'cpu'.*meta"):
        selective_scan(**kwargs, backend="cpu")
