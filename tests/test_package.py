"""medssm/__init__.py: the OpenMP spin limit is applied only when medssm is imported before torch."""

import os
import subprocess
import sys

import pytest

PROBE = ("import os, sys; {first}; import medssm; "
         "print(medssm.OPENMP_SPIN_LIMITED, os.environ.get('GOMP_SPINCOUNT'), '|', medssm.openmp_spin_note())")


def _probe(first: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    result = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], capture_output=True, text=True,
                            env={**clean, **env}, timeout=120, check=True)
    return result.stdout.strip()


@pytest.mark.parametrize(("first", "env", "expected"), [
    ("pass", {}, "True 30000 | GOMP_SPINCOUNT=30000 (set by medssm)"),  # medssm first: limited
    ("import torch", {}, "False None | libgomp default spin (torch was imported before medssm)"),
    ("pass", {"GOMP_SPINCOUNT": "5"}, "False 5 | GOMP_SPINCOUNT=5 (yours)"),  # the user's setting wins
    ("pass", {"OMP_WAIT_POLICY": "ACTIVE"}, "False None | OMP_WAIT_POLICY=ACTIVE (yours)"),
])
def test_openmp_spin_limit_only_when_medssm_comes_first_and_unset(first, env, expected):
    assert _probe(first, **env) == expected
