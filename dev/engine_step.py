"""Where `charrnn serve`'s engine thread spends a step at a steady batch, without HTTP: an Engine
on the shipped model with B sequences of 100000 characters (none ends), stepped on this thread;
the time of `step_rows` (the model) against the whole `_one_step` (the draw, the generators,
the per-character Python), for B = 1, 16 and 32.

    python dev/engine_step.py
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from charrnn import zoo  # noqa: E402
from charrnn.backends.cpu import CpuBackend  # noqa: E402
from charrnn.engine import Engine, Job, Seq, Sessions, Settings  # noqa: E402


def main() -> None:
    ck = zoo.load_checkpoint("shakespeare")
    be = CpuBackend(ck.config, ck.params)
    print("load average", os.getloadavg(), flush=True)
    for B in (1, 16, 32):
        eng = Engine("m", be, ck.vocab, Sessions())
        eng.warm_up()
        job = Job(lambda ev: None)
        st = Settings(max_tokens=100000, temperature=0.8)
        job.seqs = [Seq(job, i, np.array([ck.vocab.encode("T")[0]], np.int64), st, np.random.default_rng(i))
                    for i in range(B)]
        eng._admit(job.seqs)
        spent = [0.0]
        inner = eng._step

        def timed(codes, state):
            t = time.perf_counter()
            out = inner(codes, state)
            spent[0] += time.perf_counter() - t
            return out
        eng._step = timed
        for _ in range(50):
            eng._one_step()
        best_all, best_model = 1e9, 1e9
        for _ in range(5):
            spent[0] = 0.0
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < 0.3:
                eng._one_step()
                n += 1
            whole = (time.perf_counter() - t) / n
            if whole < best_all:
                best_all, best_model = whole, spent[0] / n
        print(f"{B:2d} rows: a step {best_all * 1e6:.0f} us, of it step_rows {best_model * 1e6:.0f} us; "
              f"{B / best_all:.0f} chars/s on this thread", flush=True)
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
