"""`charrnn` as an MPI rank with a fault injected, for tests/test_dist.py (not a test module).

Usage: mpiexec -n 2 python tests/dist_driver.py train ARGS...
CHARRNN_TEST_FAULT=RANK:STEP:WHAT makes rank RANK, just before its step STEP, do WHAT:
  raise   raise RuntimeError            kill    SIGKILL itself        stop   SIGSTOP itself
  pause   sleep 3 s (the test signals mpiexec meanwhile)
  corpus  (at start) read a corpus path that does not exist instead of the one given
Just before the fault it writes the time (time.time()) to the file CHARRNN_TEST_MARK.
"""
import os
import signal
import sys
import time
from pathlib import Path

from charrnn import dist, train
from charrnn.cli import main

rank_s, step_s, what = os.environ.get("CHARRNN_TEST_FAULT", "-1:0:none").split(":")
me = dist.detect().rank if dist.detect() else 0

if int(rank_s) == me:
    def mark():
        Path(os.environ["CHARRNN_TEST_MARK"]).write_text(repr(time.time()))

    if what == "corpus":
        sys.argv[2] = str(Path(sys.argv[2]).with_name("no-such-corpus.txt"))
        mark()
    step_fn = train.Trainer._train_step

    def faulty(self, *a, **k):
        if self.progress.step == int(step_s) and what != "corpus":
            mark()
            if what == "raise":
                raise RuntimeError("injected fault")
            if what in ("kill", "stop"):
                os.kill(os.getpid(), signal.SIGKILL if what == "kill" else signal.SIGSTOP)
            if what == "pause":
                time.sleep(3)
        return step_fn(self, *a, **k)
    train.Trainer._train_step = faulty

sys.argv[0] = "charrnn"
main()
