"""Bits per character on held-out text: one stream, the state carried through the whole text."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def evaluate(backend, codes: np.ndarray, seq_len: int = 256,
             progress: Callable[[int], None] | None = None) -> tuple[float, int]:
    """Summed loss in nats over every prediction codes[1:] given codes[:-1], and its count."""
    n = len(codes) - 1
    if n < 1:
        return 0.0, 0
    state = backend.zero_state(1)
    total = 0.0
    for start in range(0, n, seq_len):
        end = min(n, start + seq_len)
        x = codes[start:end].astype(np.int64).reshape(-1, 1)
        y = codes[start + 1:end + 1].astype(np.int64).reshape(-1, 1)
        loss, state = backend.loss(x, y, state)
        total += loss
        if progress:
            progress(end - start)
    return total, n


def summary(nats_sum: float, count: int) -> dict:
    """nats/char, bits/char and perplexity from a summed loss."""
    nats = nats_sum / max(count, 1)
    return {"chars": count, "nats_per_char": nats, "bits_per_char": nats / math.log(2),
            "perplexity": math.exp(nats)}
