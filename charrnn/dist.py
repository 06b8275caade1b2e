"""MPI data-parallel training: launch detection, the per-step all-reduce, and aborting the job.

`detect()` reads only the environment a launcher leaves (mpiexec from MPICH or Open MPI, srun),
so a single-process run never imports mpi4py. `Comm` wraps MPI.COMM_WORLD with the few
collectives training needs, every one non-blocking and polled against a deadline: a rank that
died or stopped ends the job after `timeout` seconds instead of hanging it. `abort()` ends
every rank with one exit code (1, 2, 130, 143 pass through MPI_Abort to mpiexec).

This module imports nothing heavy at the top: charrnn/threads.py calls `blas_threads_for()`
before NumPy loads.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 600.0    # the first step compiles the kernels; a dead peer ends the job after this


@dataclass(frozen=True)
class Launch:
    """What the launcher says about this process: world size and rank, ranks on this node."""
    size: int
    rank: int
    local_size: int
    local_rank: int


def _int(env, key: str) -> int | None:
    v = env.get(key, "").strip()
    return int(v) if v.isdigit() else None


def _slurm_tasks_here(env) -> int | None:
    """SLURM_STEP_TASKS_PER_NODE looks like '2(x3),1'; the first count is a good guess for
    this node before MPI starts (Comm measures the exact figure)."""
    v = env.get("SLURM_STEP_TASKS_PER_NODE", "")
    head = v.split("(")[0].split(",")[0]
    return int(head) if head.isdigit() else None


def detect(env=None) -> Launch | None:
    """The launch this process is part of, from the environment alone; None when it runs alone
    (no launcher, or a launcher that started one process)."""
    env = os.environ if env is None else env
    size = rank = None
    for size_key, rank_key in (("PMI_SIZE", "PMI_RANK"),                         # MPICH Hydra, Intel MPI
                               ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),  # Open MPI
                               ("PMIX_SIZE", "PMIX_RANK"),
                               ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID")):        # srun (not sbatch's shell)
        size, rank = _int(env, size_key), _int(env, rank_key)
        if size is not None and rank is not None:
            break
    else:
        if _int(env, "PMIX_RANK") is None:        # PMIx gives the rank; MPI tells the size later
            return None
        size, rank = 0, _int(env, "PMIX_RANK")
    if size == 1:
        return None
    local_size = (_int(env, "MPI_LOCALNRANKS") or _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
                  or _slurm_tasks_here(env) or 1)
    local_rank = next((v for v in (_int(env, "MPI_LOCALRANKID"), _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"),
                                   _int(env, "SLURM_LOCALID")) if v is not None), 0)
    return Launch(size, rank, local_size, local_rank)


def blas_threads_for(launch: Launch | None) -> int | None:
    """Compute threads for one rank: the cores it may use divided by the ranks on its node;
    None when it runs alone. A launcher that already bound the rank to fewer cores than the
    machine has (--bind-to) gets exactly those."""
    if launch is None:
        return None
    try:
        mine = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        mine = os.cpu_count() or 1
    if mine >= (os.cpu_count() or 1):
        mine //= max(1, launch.local_size)
    return max(1, mine)


class DistError(Exception):
    """A collective did not complete: another rank died, hangs or was stopped."""


class Comm:
    """MPI.COMM_WORLD with what training needs; every collective is polled against `timeout`."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S):
        from mpi4py import MPI
        self.MPI, self.timeout = MPI, float(timeout)
        self.world = MPI.COMM_WORLD
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        self.node = self.world.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = self.node.Get_rank(), self.node.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def pick_gpu(self) -> None:
        """Ranks on one machine take its GPUs in turn, by local rank."""
        from numba import cuda
        cuda.select_device(self.local_rank % len(cuda.gpus))

    # -- waiting --------------------------------------------------------------------------
    def _wait(self, req, what: str) -> None:
        """Poll `req` to completion. MPI moves a non-blocking collective only inside these
        calls, so the first half second polls with a bare yield (a step's all-reduce takes a
        few ms, and 1 ms naps between polls made a 1 MB one several times slower:
        bench/RESULTS.md); longer waits (rank 0 writing a checkpoint) nap 1 ms between polls
        and leave the cores to the others."""
        start = time.monotonic()
        spins, nap = 0, 0.0
        while not req.Test():
            spins += 1
            time.sleep(nap)
            if spins % 64 == 0:
                waited = time.monotonic() - start
                nap = 0.001 if waited > 0.5 else 0.0
                if waited > self.timeout:
                    raise DistError(f"no answer from the other ranks in {self.timeout:g} s ({what}): "
                                    f"a rank died, hangs or was stopped; see --dist-timeout")

    def allreduce_(self, buf) -> None:
        """Sum `buf` (a contiguous NumPy array) over all ranks, in place."""
        self._wait(self.world.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), "all-reduce")

    def bcast_(self, buf, root: int = 0) -> None:
        """Overwrite `buf` (contiguous) with root's copy."""
        self._wait(self.world.Ibcast(buf, root=root), "broadcast")

    def barrier(self, node_only: bool = False) -> None:
        comm = self.node if node_only else self.world
        self._wait(comm.Ibarrier(), "barrier")

    def gather_streams(self, local, axis: int):
        """Concatenate every rank's `local` along `axis` (its streams) on rank 0; None elsewhere."""
        import numpy as np
        mine = np.ascontiguousarray(np.moveaxis(local, axis, 0))
        rows = np.zeros(self.size, np.int64)
        rows[self.rank] = mine.shape[0]
        self.allreduce_(rows)
        per_row = int(np.prod(mine.shape[1:], dtype=np.int64))
        counts = rows * per_row
        full = np.empty((int(rows.sum()),) + mine.shape[1:], mine.dtype) if self.is_root else None
        recv = [full, (counts, np.concatenate([[0], np.cumsum(counts)[:-1]]))] \
            if self.is_root else None
        self._wait(self.world.Igatherv(mine, recv, root=0), "gather")
        return np.moveaxis(full, 0, axis) if self.is_root else None

    def abort(self, code: int) -> None:
        """End every rank of the job now with exit `code`."""
        sys.stderr.flush()
        self.world.Abort(int(code) or 1)


_comm: Comm | None = None


def start(timeout: float = DEFAULT_TIMEOUT_S) -> Comm | None:
    """Join the MPI job this process was launched into (imports mpi4py); None when alone."""
    global _comm
    if _comm is None and detect() is not None:
        try:
            import mpi4py
        except ImportError:
            raise DistError("launched by an MPI launcher, but mpi4py is not installed: "
                            "pip install 'charrnn-numba[mpi]', or give --dist off") from None
        mpi4py.rc.thread_level = "funneled"   # only the main thread calls MPI; BLAS and lane threads never do
        _comm = Comm(timeout)
        if _comm.size == 1:
            _comm = None
    return _comm


def current() -> Comm | None:
    return _comm


_agreed = False


def agreed_exit() -> None:
    """Every rank decided on the same reduced values to stop (a signal, divergence) and rank 0
    has saved: they leave together with the same code, no abort needed."""
    global _agreed
    _agreed = True


def abort_on_failure(code) -> None:
    """Called with a rank's exit code: a failing rank takes the whole job down (exit codes kept),
    so no other rank waits in a collective for it. A no-op outside a distributed run."""
    if _comm is not None and code not in (0, None) and not _agreed:
        _comm.abort(code if isinstance(code, int) else 1)
