"""How CPU threads wait, set before torch loads (OpenMP reads its settings once, when it starts).

torch's CPU kernels run on an OpenMP thread pool whose threads, by GNU OpenMP's default, spin
for a while at the end of every parallel region waiting for the next one. On a machine whose
cores another process also uses (a second training, a test suite), a spinning thread burns the
time slice the other process's thread needed, and both slow down far more than the shared cores
explain (two small trainings on 2 cores: 5-14x each instead of 2x; benchmarks/contention.py).
Waiting passively (``OMP_WAIT_POLICY=PASSIVE``: sleep until woken) gives the core away instead.

``SEQMODEL_THREAD_WAIT=spin`` keeps OpenMP's default, and an ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` already in the environment is left as it is. Importing `seqmodel` after torch
is too late for this process (its child processes still inherit the setting).
"""

from __future__ import annotations

import os

KNOB = "SEQMODEL_THREAD_WAIT"  # "passive" (default) or "spin"
OPENMP = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def wait_passively(environ=os.environ) -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose otherwise; whether it was set."""
    if environ.get(KNOB, "passive").lower() == "spin" or any(name in environ for name in OPENMP):
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
