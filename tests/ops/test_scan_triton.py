"""The "triton" selective-scan backend against the reference loop: outputs, last state and every gradient.

On machines without a GPU the kernels run under Triton's interpreter (see triton_interpreter.py) on small
shapes, with checkpoints every 4 steps so that short sequences cross several chunks; a larger grid is
``-m slow``. With a CUDA GPU, the compiled kernels are checked on the grid of test_selective_scan.py instead.
That the kernels compile to GPU code is checked without a GPU (triton_compile_check.py, in a subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from scan_inputs import Case, make_inputs
from test_selective_scan import DEFAULT_CASES, SLOW_CASES, assert_results_match, reference_results, run_scan
from torch.utils._python_dispatch import TorchDispatchMode
from triton_interpreter import interpreter_skip_reason

from medssm.ops import available_backends, scan_triton, selective_scan

SKIP_REASON = interpreter_skip_reason()
interpreted = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
HERE = Path(__file__).parent


@pytest.fixture
def interpreter(monkeypatch):
    """Opt in to the interpreter for this test only, with checkpoints every 4 steps."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(scan_triton, "CHUNK", 4)


GROUPED = {"b_mode": "grouped", "c_mode": "grouped", "groups": 2}
ONE = {"batch": 1}  # the interpreter runs the programs one after the other: one batch element halves the time

CASES = [
    Case(seqlen=1, **ONE),
    Case(seqlen=7),
    Case(seqlen=13, **GROUPED),
    Case(seqlen=9, b_mode="fixed", c_mode="fixed", **ONE),
    Case(seqlen=9, b_mode="fixed", c_mode="fixed", has_z=False, **ONE),
    Case(seqlen=9, b_mode="fixed", c_mode="selective", **ONE),
    Case(seqlen=9, b_mode="selective", c_mode="grouped", groups=2, **ONE),
    Case(seqlen=9, b_mode="grouped", c_mode="fixed", groups=4, **ONE),  # one channel per group
    Case(seqlen=9, has_D=False, has_z=False, **ONE),
    Case(seqlen=9, has_delta_bias=False, delta_softplus=False, **ONE),
    Case(seqlen=9, return_last_state=False, **ONE),
    Case(seqlen=9, has_D=False, has_z=False, has_delta_bias=False, delta_softplus=False, return_last_state=False,
         **ONE),
    Case(seqlen=11, noncontiguous=True),
    Case(seqlen=11, noncontiguous=True, **GROUPED, **ONE),
    Case(seqlen=9, itype=torch.float16, **ONE),
    Case(seqlen=9, itype=torch.bfloat16, **GROUPED, **ONE),
    Case(dim=5, d_state=3, seqlen=6, **ONE),  # masked channels and states
    Case(dim=6, d_state=5, seqlen=6, b_mode="grouped", c_mode="grouped", groups=3, **ONE),  # 2 channels per group
    Case(seqlen=16, delta_scale=2.0, a_init="s4d", **ONE),  # Mamba's fast decays
]
SLOW_INTERPRETED = [case for case in DEFAULT_CASES if case.seqlen <= 257 and case.dim <= 33]


@interpreted
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES]
                         + [pytest.param(c, id=f"slow-{c.id}", marks=pytest.mark.slow) for c in SLOW_INTERPRETED])
def test_matches_reference_interpreted(interpreter, case):
    results = run_scan(case, "triton")
    assert results["out"].dtype == case.itype
    assert_results_match(results, reference_results(case), case)


@interpreted
def test_default_chunk_interpreted(monkeypatch):
    """Two checkpoints of the default 32 steps, the second chunk partial (L = 37, a prime)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    case = Case(seqlen=37, has_z=False, **ONE)
    assert_results_match(run_scan(case, "triton"), reference_results(case), case)


@interpreted
def test_gradient_through_last_state_only(interpreter):
    """With the output unused, the backward starts from the last state's gradient alone."""
    grads = {}
    for backend in ("reference", "triton"):
        kwargs, leaves = make_inputs(Case(seqlen=6, **ONE))
        _, last = selective_scan(**kwargs, backend=backend)
        last.sum().backward()
        grads[backend] = {name: leaf.grad for name, leaf in leaves.items()}
    for name, want in grads["reference"].items():
        got = grads["triton"][name]
        if want is None:  # z and D do not reach the state
            assert got is None or not got.any(), name
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@interpreted
def test_inference_saves_no_checkpoints(interpreter, monkeypatch):
    """Under no_grad (parameters still requiring grad) the forward stores no checkpoints and builds no graph."""
    saves = []
    forward = scan_triton.scan_forward
    monkeypatch.setattr(scan_triton, "scan_forward", lambda *a, save: saves.append(save) or forward(*a, save=save))
    case = Case(seqlen=5, **ONE)
    kwargs, _ = make_inputs(case)
    with torch.no_grad():
        out, last = selective_scan(**kwargs, backend="triton")
    assert saves == [False] and out.grad_fn is None
    want_out, want_last = reference_results(case)["out"], reference_results(case)["last_state"]
    torch.testing.assert_close(out, want_out, rtol=6e-4, atol=2e-3)
    torch.testing.assert_close(last, want_last, rtol=6e-4, atol=2e-3)


class _LargestAllocation(TorchDispatchMode):
    """The most elements of any tensor a torch op creates inside the block (in-place ops, which the interpreter
    uses to copy the kernels' results back, create none)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__.endswith("_"):
            return out
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@interpreted
def test_never_allocates_a_full_state_tensor(interpreter):
    """Forward and backward allocate nothing near (batch, d, L, N): the checkpoints are (batch, d, L/CHUNK, N) and
    the backward's workspace (programs, CHUNK, BLOCK_D, BLOCK_N)."""
    case = Case(batch=1, dim=4, d_state=16, seqlen=16)
    kwargs, _ = make_inputs(case)
    full = case.batch * case.dim * case.d_state * case.seqlen
    with _LargestAllocation() as mode:
        out, last = selective_scan(**kwargs, backend="triton")
        (out.sum() + last.sum()).backward()
    assert 0 < mode.largest <= full // 4, f"an op made a tensor of {mode.largest} elements (full state: {full})"


@interpreted
def test_interpreter_is_listed_last_and_never_auto(interpreter):
    names = available_backends("cpu")
    assert names[-1] == "triton" and names[0] != "triton"


def test_refused_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "triton" not in available_backends("cpu")
    kwargs, _ = make_inputs(Case(seqlen=4))
    with pytest.raises(ValueError, match="'triton'.*TRITON_INTERPRET"):
        selective_scan(**kwargs, backend="triton")


def test_block_width_never_straddles_groups():
    assert scan_triton.block_d(1536, []) == 16
    assert scan_triton.block_d(5, []) == 8  # one masked block
    assert scan_triton.block_d(24, [3]) == 8
    assert scan_triton.block_d(33, [3]) == 1  # 11 channels per group
    assert scan_triton.block_d(64, [4, 8]) == 8


def _compile_check(*args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parents[1] / "src"), env.get("PYTHONPATH")]))
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, str(HERE / "triton_compile_check.py"), *args], capture_output=True,
                          text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.skipif(SKIP_REASON == "triton is not installed (pip install -e '.[dev]')", reason="needs triton")
def test_kernels_compile_for_hopper():
    """The kernels in the flags Mamba uses, compiled to sm_90 machine code by Triton's own ptxas (no GPU)."""
    _compile_check("--arch", "90")


@pytest.mark.slow
@pytest.mark.skipif(SKIP_REASON == "triton is not installed (pip install -e '.[dev]')", reason="needs triton")
def test_kernels_compile_every_variant():
    _compile_check("--all", "--arch", "90")


# ---------------------------------------------------------------- on a GPU


def run_scan_on(case: Case, backend: str, device: str) -> dict[str, torch.Tensor | None]:
    """:func:`run_scan` on ``device``, results moved to the CPU."""
    kwargs, leaves = make_inputs(case, device=device)
    result = selective_scan(**kwargs, backend=backend)
    out, last_state = result if case.return_last_state else (result, None)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.dtype)
    out.backward(grad_out.to(device))
    results = {"out": out.detach().cpu(), "last_state": None if last_state is None else last_state.detach().cpu()}
    results.update({f"grad_{name}": leaf.grad.cpu() for name, leaf in leaves.items()})
    return results


@gpu
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in DEFAULT_CASES]
                         + [pytest.param(c, id=f"slow-{c.id}", marks=pytest.mark.slow) for c in SLOW_CASES])
def test_matches_reference_gpu(case):
    assert_results_match(run_scan_on(case, "triton", "cuda"), reference_results(case), case)


@gpu
def test_auto_picks_triton_on_gpu():
    assert available_backends("cuda")[0] == "triton"
