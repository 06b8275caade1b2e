"""How many cores a charrnn process gives BLAS, set by one explicit call before NumPy loads.

`setup_threads()` maps CHARRNN_THREADS=n onto OpenBLAS's thread count; without it, an MPI rank
(charrnn/dist.py reads the launcher's environment) takes its share of the node's cores; and
Numba's own parallel pool stays at one thread. BLAS or charrnn's own lanes (backends/lanes.py)
own the cores, never Numba's pool: a second spinning pool (Numba's OpenMP) beside OpenBLAS's
slowed both by up to 30x on a 2-core machine.

OpenBLAS reads its variable once, when NumPy first loads it, so the call must come first: the
commands make it before their heavy imports (cli.py), and a library user who wants the same
calls it before importing NumPy. Importing charrnn changes nothing by itself. This module
imports nothing heavy.
"""
from __future__ import annotations

import os
from typing import MutableMapping

from charrnn import dist


def setup_threads(env: MutableMapping[str, str] | None = None) -> None:
    """Set OPENBLAS_NUM_THREADS from CHARRNN_THREADS (or, unset, to an MPI rank's share of its
    node, unless already set) and NUMBA_NUM_THREADS to 1 unless set, in `env` (os.environ)."""
    env = os.environ if env is None else env
    threads = env.get("CHARRNN_THREADS", "").strip()
    if threads.isdigit() and int(threads) > 0:
        env["OPENBLAS_NUM_THREADS"] = threads
    else:
        share = dist.blas_threads_for(dist.detect(env))
        if share:
            env.setdefault("OPENBLAS_NUM_THREADS", str(share))
    env.setdefault("NUMBA_NUM_THREADS", "1")
