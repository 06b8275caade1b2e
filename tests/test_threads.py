"""charrnn/threads.py: CHARRNN_THREADS, an MPI rank's share and Numba's pool, set by one explicit
call; the commands make it before NumPy loads."""
import os
import subprocess
import sys
from pathlib import Path

from charrnn.threads import setup_threads

ROOT = Path(__file__).resolve().parent.parent


def test_charrnn_threads_sets_blas_threads_and_numba_keeps_one_thread():
    env = {"CHARRNN_THREADS": "3", "OPENBLAS_NUM_THREADS": "8"}
    setup_threads(env)
    assert env["OPENBLAS_NUM_THREADS"] == "3" and env["NUMBA_NUM_THREADS"] == "1"


def test_without_charrnn_threads_a_lone_process_leaves_blas_alone_and_numba_as_given():
    env = {"NUMBA_NUM_THREADS": "4"}
    setup_threads(env)
    assert env == {"NUMBA_NUM_THREADS": "4"}


def test_an_mpi_rank_takes_its_share_of_the_node_unless_blas_threads_are_given():
    rank = {"PMI_SIZE": "2", "PMI_RANK": "1", "MPI_LOCALNRANKS": "2"}
    env = dict(rank)
    setup_threads(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert env["OPENBLAS_NUM_THREADS"] == str(max(1, cores // 2))
    env = dict(rank, OPENBLAS_NUM_THREADS="5")
    setup_threads(env)
    assert env["OPENBLAS_NUM_THREADS"] == "5"


_WATCH = """
import os, sys
seen = []
class Watch:
    def find_spec(self, name, path, target=None):
        if name == "numpy" and not seen:
            seen.append(os.environ.get("OPENBLAS_NUM_THREADS"))
sys.meta_path.insert(0, Watch())
from charrnn.cli import main
sys.argv = ["charrnn", "corpus", "list"]
try:
    main()
except SystemExit:
    pass
print(seen, file=sys.stderr)
"""


def test_a_command_sets_the_threads_before_numpy_loads():
    env = dict(os.environ, CHARRNN_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OPENBLAS_NUM_THREADS", None)
    r = subprocess.run([sys.executable, "-c", _WATCH], capture_output=True, text=True, env=env, timeout=120)
    assert r.stderr.strip().splitlines()[-1] == "['1']", r.stderr
