"""`charrnn` as an MPI rank with a fault injected, for tests/test_dist.py (not a test module).

Usage: mpiexec -n 2 python tests/dist_driver.py train ARGS...
CHARRNN_TEST_FAULT=RANK:STEP:WHAT makes rank RANK, just before its step STEP, do WHAT:
  raise   raise RuntimeError            kill    SIGKILL itself        stop   SIGSTOP itself
  pause   wait until the SIGINT the test sends to mpiexec has reached this rank
  corpus  (at start) read a corpus path that does not exist instead of the one given
Just before the fault it writes the time (time.time()) to the file CHARRNN_TEST_MARK.

The --dist-timeout given is the bound from STEP on: every rank arms it just before that step.
Until then the ranks wait as long as the default allows, so that on a loaded machine compiling
or loading the kernels and the first steps cannot end the job before the fault is injected.
"""
import os
import signal
import sys
import time
from pathlib import Path

from charrnn.threads import setup_threads

setup_threads()              # as the command line does, before charrnn.train loads NumPy
from charrnn import dist, train  # noqa: E402
from charrnn.cli import main  # noqa: E402

rank_s, step_s, what = os.environ.get("CHARRNN_TEST_FAULT", "-1:0:none").split(":")
fault_rank, fault_step = int(rank_s), int(step_s)
me = dist.detect().rank if dist.detect() else 0
PAUSE_LIMIT_S = 600          # the test's own timeout ends a run whose SIGINT never comes


def mark():
    """Written whole or not at all: the test reads it as soon as it exists."""
    path = Path(os.environ["CHARRNN_TEST_MARK"])
    part = path.with_name(path.name + ".part")
    part.write_text(repr(time.time()))
    os.replace(part, path)


given = []
start = dist.start


def start_held(timeout=dist.DEFAULT_TIMEOUT_S):
    given.append(timeout)
    return start(max(timeout, dist.DEFAULT_TIMEOUT_S))


dist.start = start_held

if fault_rank == me and what == "corpus":
    sys.argv[2] = str(Path(sys.argv[2]).with_name("no-such-corpus.txt"))
    mark()

step_fn = train.Trainer._train_step


def faulty(self, *a, **k):
    if self.progress.step == fault_step:
        if self.dist is not None:
            self.dist.timeout = given[0]
        if fault_rank == me and what != "corpus":
            mark()
            if what == "raise":
                raise RuntimeError("injected fault")
            if what in ("kill", "stop"):
                os.kill(os.getpid(), signal.SIGKILL if what == "kill" else signal.SIGSTOP)
            if what == "pause":
                deadline = time.monotonic() + PAUSE_LIMIT_S
                while not self._sig.signum and time.monotonic() < deadline:
                    time.sleep(0.01)
    return step_fn(self, *a, **k)


train.Trainer._train_step = faulty

sys.argv[0] = "charrnn"
main()
