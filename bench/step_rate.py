"""Training speed by window shape and width: one training step (forward, backward, Adam update,
clipping, dropout 0.2) of a 2-layer LSTM (`--norm layer`: layer-normalised) on random characters
(vocabulary 65), for each TxBxH given, on the threads CHARRNN_THREADS allows. Best of three
1-second timings after a warm-up, in ms a step and training characters a second. What `charrnn
train --seq-len T --batch-size B --hidden H` reads in a budget is about this rate less validation
and checkpoints (bench/RESULTS.md, "The default at today's speed").

    CHARRNN_THREADS=2 python bench/step_rate.py 50x50x256 50x32x256 25x100x256
    CHARRNN_THREADS=2 python bench/step_rate.py --norm layer 50x50x256 100x25x256
"""
from __future__ import annotations

import argparse

import numpy as np

from charrnn.backends import make_backend
from charrnn.budget import time_steps
from charrnn.config import ModelConfig
from charrnn.model import init_params
from charrnn.optim import new_optimizer
from charrnn.options import TrainOptions
from charrnn.step import train_step


def step_rate(T: int, B: int, H: int, seconds: float = 1.0, rounds: int = 3, norm: str = "none") -> float:
    """Seconds per training step of a 2xH LSTM on (T, B) windows: the best of `rounds` timings."""
    rng = np.random.default_rng(0)
    cfg = ModelConfig(vocab_size=65, hidden=H, dropout=0.2, norm=norm)
    p = init_params(cfg, rng)
    be = make_backend("cpu", cfg, p)
    opt = new_optimizer(TrainOptions(), p.flat.size)
    x, y = rng.integers(0, 65, (T, B)), rng.integers(0, 65, (T, B))
    state = be.zero_state(B)
    be.warm_up(T, B, opt)
    best = float("inf")
    for _ in range(rounds):
        state = train_step(be, opt, x, y, state, 1e-3, ("norm", 5.0), dropout_seed=1).state  # untimed
        steps, wall, state = time_steps(be, opt, x, y, state, seconds)
        best = min(best, wall / steps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="+", help="TxBxH: window length, streams, units per layer")
    ap.add_argument("--norm", choices=("none", "layer"), default="none", help="the LSTM's normalisation")
    a = ap.parse_args()
    for spec in a.shapes:
        T, B, H = (int(v) for v in spec.lower().split("x"))
        s = step_rate(T, B, H, norm=a.norm)
        print(f"T {T:3d}  B {B:3d}  2x{H:<4d} {s * 1e3:7.1f} ms a step  {T * B / s:9,.0f} chars/s", flush=True)


if __name__ == "__main__":
    main()
