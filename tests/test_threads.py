"""CPU threads wait passively unless the user asks otherwise: set before torch loads, so that a
run sharing its cores with another gives them away instead of spinning (benchmarks/contention.py)."""

import os
import subprocess
import sys

import pytest

SHOW = "import os, sys; import seqmodel; import torch; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"


def policy(**env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SEQMODEL_THREAD_WAIT")}
    done = subprocess.run([sys.executable, "-c", SHOW], env=base | env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.parametrize("env, expected", [
    ({}, "PASSIVE None"),
    ({"SEQMODEL_THREAD_WAIT": "spin"}, "None None"),  # OpenMP's own default: the old behaviour
    ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE None"),
    ({"GOMP_SPINCOUNT": "10000"}, "None 10000"),
], ids=["default", "spin", "user-policy", "user-spincount"])
def test_importing_seqmodel_makes_openmp_wait_passively_unless_told_otherwise(env, expected):
    assert policy(**env) == expected


def test_the_cli_sets_it_before_torch_loads():
    code = "import sys, os; import seqmodel.cli; print('torch' in sys.modules, os.environ['OMP_WAIT_POLICY'])"
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SEQMODEL_THREAD_WAIT")}
    done = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "PASSIVE"]
