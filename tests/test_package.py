"""medssm.tune_process (src/medssm/runtime.py): importing medssm leaves the process alone; the call (and the
medssm command, which makes it before torch loads) limits the OpenMP spin and tunes malloc."""

import os
import subprocess
import sys

import pytest

PROBE = ("import os, sys; {first}; import medssm; {call}; "
         "print(os.environ.get('GOMP_SPINCOUNT'), '|', medssm.openmp_spin_note())")


def _run_fresh(code: str, unset: tuple[str, ...], *args: str, **env: str) -> str:
    """stdout of ``python -c code args...`` (or ``python -m medssm args...`` for code "-m medssm") in a new
    interpreter, with the variables in ``unset`` (or starting with one that ends in an underscore) removed from
    the environment and ``env`` added."""
    clean = {k: v for k, v in os.environ.items()
             if k not in unset and not any(k.startswith(u) for u in unset if u.endswith("_"))}
    command = code.split() if code.startswith("-m ") else ["-c", code]
    result = subprocess.run([sys.executable, *command, *args], capture_output=True, text=True,
                            env={**clean, **env}, timeout=120, check=True)
    return result.stdout.strip()


def _probe(first: str, call: str, **env: str) -> str:
    return _run_fresh(PROBE.format(first=first, call=call), ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"), **env)


def test_import_medssm_leaves_the_process_alone():
    assert _run_fresh("import medssm, os; print(os.environ.get('GOMP_SPINCOUNT'))",
                      ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")) == "None"
    assert _probe("pass", "pass") == "None | libgomp default spin (medssm.tune_process() was not called)"


@pytest.mark.parametrize(("first", "env", "expected"), [
    ("pass", {}, "True 30000 | GOMP_SPINCOUNT=30000 (set by medssm)"),  # called before torch: limited
    ("import torch", {}, "False None | libgomp default spin (torch was imported before medssm.tune_process())"),
    ("pass", {"GOMP_SPINCOUNT": "5"}, "False 5 | GOMP_SPINCOUNT=5 (yours)"),  # the user's setting wins
    ("pass", {"OMP_WAIT_POLICY": "ACTIVE"}, "False None | OMP_WAIT_POLICY=ACTIVE (yours)"),
])
def test_openmp_spin_limit_only_when_tune_process_comes_before_torch_and_unset(first, env, expected):
    call = "print(medssm.tune_process()['openmp'], end=' ')"
    assert _probe(first, call, **env) == expected


def test_tune_process_openmp_false_leaves_it_and_says_so():
    assert _probe("pass", "medssm.tune_process(openmp=False, malloc=False)") == (
        "None | libgomp default spin (medssm.tune_process(openmp=False))")


ALL_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "MALLOC_", "GLIBC_TUNABLES", "MEDSSM_MALLOC")


def test_the_medssm_command_tunes_the_process_before_torch_loads():
    # The `medssm` console script imports medssm.cli and runs main(): the import must not load torch.
    assert _run_fresh("import sys, medssm.cli; print('torch' in sys.modules)", ALL_SETTINGS) == "False"
    out = _run_fresh("-m medssm", ALL_SETTINGS, "info")
    assert "OpenMP: GOMP_SPINCOUNT=30000 (set by medssm)" in out
    if sys.platform == "linux":
        assert "malloc: freed memory kept (no mmap, no trim; set by medssm)" in out
    # main() itself sets it, and processes the command starts (torchrun's workers, say) inherit it.
    child = ("import subprocess, sys; import medssm.cli as cli; "
             "cli.cmd_info = lambda args: print(subprocess.run([sys.executable, '-c', "
             "'import os; print(os.environ.get(\"GOMP_SPINCOUNT\"))'], capture_output=True, text=True).stdout) or 0; "
             "cli.main(['info'])")
    assert _run_fresh(child, ALL_SETTINGS) == "30000"


MALLOC_PROBE = """
import resource
import sys
import medssm
tuned = medssm.tune_process(openmp=False)["malloc"] if sys.argv[1:] == ["tune"] else False
import torch
from medssm.ops import selective_scan
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
gen = torch.Generator().manual_seed(0)
u, delta, z = (torch.randn(1, 96, 4096, generator=gen).requires_grad_() for _ in range(3))
A = -torch.rand(96, 4).requires_grad_()
B, C = (torch.randn(1, 4, 4096, generator=gen).requires_grad_() for _ in range(2))
def step():  # a training step: forward, backward, the gradients dropped before the next one
    for t in (u, delta, z, A, B, C):
        t.grad = None
    selective_scan(u, delta, A, B, C, z=z, delta_softplus=True, backend="torch").sum().backward()
for _ in range(10):  # the heap settles within a few steps
    step()
start = faults()
for _ in range(20):
    step()
print(tuned, (faults() - start) // 20, '|', medssm.malloc_note())
"""


def _malloc_probe(tune: bool, probe: str = MALLOC_PROBE, **env: str) -> tuple[str, int, str]:
    """(tuned, page faults per training step, malloc_note()) with or without ``medssm.tune_process()``."""
    tuned, faults, _, note = _run_fresh(probe, ("MALLOC_", "GLIBC_TUNABLES", "MEDSSM_MALLOC"),
                                        *(["tune"] if tune else []), **env).split(maxsplit=3)
    return tuned, int(faults), note


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_malloc_keeps_freed_blocks_so_training_steps_fault_fewer_pages_in():
    tuned, faults, note = _malloc_probe(tune=True)
    assert (tuned, note) == ("True", "malloc: freed memory kept (no mmap, no trim; set by medssm)")
    bare_tuned, bare_faults, bare_note = _malloc_probe(tune=False)  # import medssm alone tunes nothing
    assert (bare_tuned, bare_note) == ("False", "malloc: the C library's defaults")
    # measured: 0 page faults per step against 6851-7229 with glibc's adaptive thresholds (76-115 against
    # 635-2019 before the torch backend's cache-sized chunks)
    assert 3 * faults < bare_faults
    default_tuned, _, default_note = _malloc_probe(tune=True, MEDSSM_MALLOC="default")
    assert (default_tuned, default_note) == ("False", "malloc: the C library's defaults")


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_malloc_settings_of_the_user_are_left_alone():
    for env, note in ((dict(MALLOC_TRIM_THRESHOLD_="131072"), "MALLOC_TRIM_THRESHOLD_=131072"),
                      (dict(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072"),
                       "GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072")):
        tuned, _, got = _malloc_probe(tune=True, **env)
        assert (tuned, got) == ("False", f"malloc: {note} (yours)")


# A step whose tensors (67 MB) are above the largest mmap threshold glibc accepts (32 MiB), like a 3D
# model's activations at 64^3 (issue 26, item 9): they were mapped and faulted in anew at every step.
BIG_BLOCKS_PROBE = MALLOC_PROBE[:MALLOC_PROBE.index("gen = ")] + """
x = torch.randn(4, 16, 64, 64, 64).requires_grad_()
def step():
    x.grad = None
    (x * 2).relu().sum().backward()
for _ in range(3):
    step()
start = faults()
for _ in range(20):
    step()
print(tuned, (faults() - start) // 20, '|', medssm.malloc_note())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_blocks_above_the_mmap_threshold_are_kept_too():
    tuned, faults, _ = _malloc_probe(tune=True, probe=BIG_BLOCKS_PROBE)
    # the setting medssm had before: a 32 MiB mmap threshold and a 256 MiB trim threshold
    _, old_faults, _ = _malloc_probe(tune=False, probe=BIG_BLOCKS_PROBE, MALLOC_MMAP_THRESHOLD_=str(32 << 20),
                                     MALLOC_TRIM_THRESHOLD_=str(256 << 20))
    # measured: 1638 page faults per step against 65540 (four 67 MB tensors mapped per step)
    assert tuned == "True" and 10 * faults < old_faults
