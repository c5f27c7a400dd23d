"""medssm/__init__.py: the OpenMP spin limit (only when medssm is imported before torch) and the malloc setting."""

import os
import subprocess
import sys

import pytest

PROBE = ("import os, sys; {first}; import medssm; "
         "print(medssm.OPENMP_SPIN_LIMITED, os.environ.get('GOMP_SPINCOUNT'), '|', medssm.openmp_spin_note())")


def _run_fresh(code: str, unset: tuple[str, ...], **env: str) -> str:
    """stdout of ``code`` in a new interpreter, with the variables in ``unset`` (or starting with one that ends
    in an underscore) removed from the environment and ``env`` added."""
    clean = {k: v for k, v in os.environ.items()
             if k not in unset and not any(k.startswith(u) for u in unset if u.endswith("_"))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**clean, **env}, timeout=120, check=True)
    return result.stdout.strip()


def _probe(first: str, **env: str) -> str:
    return _run_fresh(PROBE.format(first=first), ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"), **env)


@pytest.mark.parametrize(("first", "env", "expected"), [
    ("pass", {}, "True 30000 | GOMP_SPINCOUNT=30000 (set by medssm)"),  # medssm first: limited
    ("import torch", {}, "False None | libgomp default spin (torch was imported before medssm)"),
    ("pass", {"GOMP_SPINCOUNT": "5"}, "False 5 | GOMP_SPINCOUNT=5 (yours)"),  # the user's setting wins
    ("pass", {"OMP_WAIT_POLICY": "ACTIVE"}, "False None | OMP_WAIT_POLICY=ACTIVE (yours)"),
])
def test_openmp_spin_limit_only_when_medssm_comes_first_and_unset(first, env, expected):
    assert _probe(first, **env) == expected


MALLOC_PROBE = """
import resource
import medssm
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
print(medssm.MALLOC_TUNED, (faults() - start) // 20, '|', medssm.malloc_note())
"""


def _malloc_probe(**env: str) -> tuple[str, int, str]:
    tuned, faults, _, note = _run_fresh(MALLOC_PROBE, ("MALLOC_", "GLIBC_TUNABLES", "MEDSSM_MALLOC"),
                                        **env).split(maxsplit=3)
    return tuned, int(faults), note


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_malloc_keeps_freed_blocks_so_training_steps_fault_fewer_pages_in():
    tuned, faults, note = _malloc_probe()
    assert (tuned, note) == ("True", "malloc: mmap threshold 32 MiB, trim threshold 256 MiB (set by medssm)")
    default_tuned, default_faults, default_note = _malloc_probe(MEDSSM_MALLOC="default")
    assert (default_tuned, default_note) == ("False", "malloc: the C library's defaults")
    # measured: 0 page faults per step against 6851-7229 with glibc's adaptive thresholds (76-115 against
    # 635-2019 before the torch backend's cache-sized chunks)
    assert 3 * faults < default_faults


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_malloc_settings_of_the_user_are_left_alone():
    for env, note in ((dict(MALLOC_TRIM_THRESHOLD_="131072"), "MALLOC_TRIM_THRESHOLD_=131072"),
                      (dict(GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072"),
                       "GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072")):
        tuned, _, got = _malloc_probe(**env)
        assert (tuned, got) == ("False", f"malloc: {note} (yours)")
