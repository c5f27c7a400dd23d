"""selective_state_update's "triton" backend against its "torch" backend (itself checked against a hand loop in
test_state_update.py): under Triton's interpreter without a GPU, compiled with one."""

from __future__ import annotations

import pytest
import torch
from test_state_update import make
from triton_interpreter import interpreter_skip_reason

from medssm.ops import selective_state_update

SKIP_REASON = interpreter_skip_reason()
interpreted = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


def compare(args: dict, dt_softplus: bool, device: str = "cpu", state_dtype=torch.float32, dtype=torch.float32):
    """Run both backends on copies of the same state; the outputs and the updated states must agree."""
    args = {k: v.to(device) for k, v in args.items() if v is not None}
    for k in ("x", "dt", "z"):
        if k in args:
            args[k] = args[k].to(dtype)
    results = {}
    for backend in ("torch", "triton"):
        state = args["state"].to(state_dtype).clone()
        rest = {k: v for k, v in args.items() if k != "state"}
        out = selective_state_update(state, **rest, dt_softplus=dt_softplus, backend=backend)
        results[backend] = (out.float().cpu(), state.float().cpu(), out.dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 and state_dtype == torch.float32 else \
        {"rtol": 1e-2, "atol": 1e-2}
    assert results["triton"][2] == dtype
    torch.testing.assert_close(results["triton"][0], results["torch"][0], **tol)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], **tol)


@pytest.fixture
def interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@interpreted
@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("extras", [True, False])
def test_heads_interpreted(interpreter, ngroups, extras):
    args = make(ngroups=ngroups)
    if not extras:
        args.update(D=None, z=None, dt_bias=None)
        args["dt"] = args["dt"].abs()
    compare(args, dt_softplus=extras)


@interpreted
def test_without_heads_interpreted(interpreter):
    args = make(nheads=1, ngroups=1, dim=19, dstate=16)  # 19 channels: a full and a masked block
    flat = {k: v.squeeze(1) if k not in ("A", "D", "dt_bias") else v.squeeze(0) for k, v in args.items()}
    compare(flat, dt_softplus=True)


@interpreted
def test_half_precision_interpreted(interpreter):
    compare(make(), dt_softplus=True, state_dtype=torch.bfloat16, dtype=torch.float16)


@interpreted
def test_strided_state_interpreted(interpreter):
    """A state that is a slice of a larger cache (the layout of a batched inference cache) is updated in place."""
    args = make(ngroups=2)
    cache = torch.zeros(2, *args["state"].shape)
    cache[1] = args["state"]
    rest = {k: v for k, v in args.items() if k != "state"}
    expected_state = args["state"].clone()
    expected = selective_state_update(expected_state, **rest, dt_softplus=True, backend="torch")
    out = selective_state_update(cache[1].transpose(-1, -2).transpose(-1, -2), **rest, dt_softplus=True,
                                 backend="triton")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache[1], expected_state, rtol=1e-5, atol=1e-5)
    assert not cache[0].any()


def test_triton_refused_without_a_gpu_or_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = make()
    state = args.pop("state")
    with pytest.raises(ValueError, match="'triton'.*TRITON_INTERPRET"):
        selective_state_update(state, **args, backend="triton")
    with pytest.raises(ValueError, match="backend"):
        selective_state_update(state, **args, backend="numba")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("ngroups", [1, 2, 4])
def test_heads_gpu(ngroups):
    compare(make(ngroups=ngroups), dt_softplus=True, device="cuda")
    compare(make(ngroups=ngroups), dt_softplus=True, device="cuda", state_dtype=torch.bfloat16,
            dtype=torch.float16)
