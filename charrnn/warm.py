"""`charrnn warm`: compile ahead of time, into Numba's on-disk cache, the CPU kernels that
`charrnn sample` and `charrnn train` take with their default settings, so that a container image
or a CI job pays for compiling once, when it is built, instead of in its first command.

Per cell it builds a model of the default shape (the shipped model's: 2 x 256, dropout 0.2) and
runs CpuBackend.warm_up for a training run of the default window (50 x 50) with the default
optimizer: the training step and the update, scoring (a prime, `charrnn eval`) and sampling. The
LSTM twice: plain (the shipped models) and layer-normalised (a new run's default, `--norm auto`).
Other shapes may take other paths (a layer under 256 units multiplies without the transposes,
a single layer runs on one lane), which compile on first use as before. Numba keys its cache by
CPU model and Python version: a cache warmed on one kind of machine is not used on another.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

CELLS = ("lstm", "gru", "rnn")


def warm(cells: Sequence[str] = ("lstm",), log: Callable[[str], None] = lambda m: None) -> dict[str, float]:
    """Compile (or load from the cache) the default paths of each cell; returns the seconds
    each cell took. Progress lines go to `log`."""
    import numpy as np

    from charrnn.backends.cpu import CpuBackend
    from charrnn.model import ModelConfig, init_params
    from charrnn.options import TrainOptions
    from charrnn.train import new_optimizer

    took = {}
    for cell in cells:
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r} (choose from {', '.join(CELLS)})")
        opts = TrainOptions()
        t0 = time.perf_counter()
        for norm in ("none", "layer") if cell == "lstm" else ("none",):
            cfg = ModelConfig(**{**vars(opts.model), "vocab_size": 65, "cell": cell, "norm": norm})
            be = CpuBackend(cfg, init_params(cfg, np.random.default_rng(0), np.float32), notify=log)
            be.warm_up(opts.seq_len, opts.batch_size, new_optimizer(opts, be.p.flat.size))
        took[cell] = time.perf_counter() - t0
        log(f"{cell}: kernels ready ({took[cell]:.1f} s)")
    return took
