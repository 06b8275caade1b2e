"""Does the lane rule pick the faster path for every cell? (CpuTuning's lane thresholds were
chosen on LSTMs; GRU and RNN take lanes by the same rule, which counts their gates.)

For each cell and config: training chars/s (train step + Adam, float32, no dropout) on two
threads with the lanes forced off (one lane, BLAS threads the products) and on (two lanes, one
core each), alternated over 8 rounds with the order flipped each round; median of the rounds.
Also says which the backend picks on its own.

    python bench/lane_rule.py                         # every cell, every config (~10 min)
    python bench/lane_rule.py --cells rnn --configs s64,s96
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("CHARRNN_THREADS", "2")
from charrnn.threads import setup_threads  # noqa: E402

setup_threads()            # CHARRNN_THREADS, before NumPy loads
import numpy as np  # noqa: E402

from charrnn.backends.cpu import CpuBackend, CpuTuning  # noqa: E402
from charrnn.model import ModelConfig, init_params  # noqa: E402
from charrnn.optim import Optimizer  # noqa: E402

CONFIGS = {"s64": (2, 64, 50, 50), "s96": (2, 96, 50, 50), "a": (2, 128, 50, 50), "e": (2, 256, 50, 50),
           "b": (2, 512, 100, 64), "c": (3, 512, 100, 32)}   # layers, hidden, T, B


def backend(cell: str, L: int, H: int, lanes: int | None):
    cfg = ModelConfig(vocab_size=65, hidden=H, layers=L, cell=cell, dropout=0.0)
    be = CpuBackend(cfg, init_params(cfg, np.random.default_rng(0)), tuning=CpuTuning(lanes=lanes))
    return be, Optimizer("adam", be.p.flat.size, np.float32)


def rate(be, opt, T: int, B: int, steps: int, rng) -> float:
    state = be.zero_state(B)
    t = time.perf_counter()
    for _ in range(steps):
        xy = rng.integers(0, 65, (T + 1, B))
        _, state = be.train_step(xy[:-1], xy[1:], state)
        be.optimizer_step(opt, 2e-3, ("norm", 5.0))
    return steps * T * B / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="lstm,gru,rnn")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    print("| cell | config | the backend picks | 1 lane, chars/s | 2 lanes, chars/s | 2 lanes / 1 lane |")
    print("|---|---|---|---|---|---|")
    for cell in a.cells.split(","):
        for name in a.configs.split(","):
            L, H, T, B = CONFIGS[name]
            sides = {k: backend(cell, L, H, k) for k in (1, 2)}
            picks = backend(cell, L, H, None)[0]._lanes_for(T, B)
            steps = max(3, int(60000 / (T * B) * (128 / H) ** 2))    # ~a second a measurement
            rng = np.random.default_rng(0)
            for be, opt in sides.values():
                rate(be, opt, T, B, 2, rng)                          # compile and warm up
            got = {1: [], 2: []}
            for r in range(a.rounds):
                for k in ((2, 1) if r % 2 == 0 else (1, 2)):
                    got[k].append(rate(*sides[k], T, B, steps, rng))
            m = {k: statistics.median(v) for k, v in got.items()}
            print(f"| {cell} | {name}: {L}x{H} T{T} B{B} | {picks} lane{'s' if picks > 1 else ''} | "
                  f"{m[1]:,.0f} | {m[2]:,.0f} | {m[2] / m[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
