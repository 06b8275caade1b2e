"""Bits per character on held-out text: one stream, the state carried through the whole text
(the reference figure `charrnn eval` reports), or, cheaper for validation during training,
several contiguous streams side by side in one batch, the state carried within each."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def evaluate(backend, codes: np.ndarray, seq_len: int = 256,
             progress: Callable[[int], None] | None = None, streams: int = 1) -> tuple[float, int]:
    """Summed loss in nats over every prediction codes[1:] given codes[:-1], and its count.

    With streams = S > 1 the text is cut into S contiguous pieces of n // S predictions, scored
    as one batch of S streams that each start from the zero state; the n % S predictions left at
    the end continue the last stream on its own. Every prediction is scored once; each piece
    after the first starts without the context the one-stream score has there, which costs a
    little (bench/RESULTS.md gives how much)."""
    n = len(codes) - 1
    if n < 1:
        return 0.0, 0
    S = max(1, min(int(streams), n))
    if S == 1:
        return _one_stream(backend, codes, seq_len, progress, backend.zero_state(1))[0], n
    m = n // S
    total, state = 0.0, backend.zero_state(S)
    # piece s covers predictions s*m .. s*m + m - 1: column s of the (T, S) windows
    inputs = np.asarray(codes[:S * m + 1], dtype=np.int64)
    for start in range(0, m, seq_len):
        end = min(m, start + seq_len)
        cols = np.arange(S) * m
        x = inputs[cols[None, :] + np.arange(start, end)[:, None]]
        y = inputs[cols[None, :] + np.arange(start + 1, end + 1)[:, None]]
        loss, state = backend.loss(x, y, state)
        total += loss
        if progress:
            progress((end - start) * S)
    if S * m < n:                                  # the remainder, after the last piece
        tail, _ = _one_stream(backend, codes[S * m:], seq_len, progress, _column(state, S - 1))
        total += tail
    return total, n


def _column(state, s: int):
    """Stream s of a batch's carried state (L, S, B, H), as a batch of one."""
    host = np.asarray(state)
    return np.ascontiguousarray(host[:, :, s:s + 1])


def _one_stream(backend, codes, seq_len, progress, state) -> tuple[float, object]:
    """Summed loss over codes[1:] as one stream from `state`, and the state after it."""
    total = 0.0
    for start in range(0, len(codes) - 1, seq_len):
        end = min(len(codes) - 1, start + seq_len)
        x = codes[start:end].astype(np.int64).reshape(-1, 1)
        y = codes[start + 1:end + 1].astype(np.int64).reshape(-1, 1)
        loss, state = backend.loss(x, y, state)
        total += loss
        if progress:
            progress(end - start)
    return total, state


def summary(nats_sum: float, count: int) -> dict:
    """nats/char, bits/char and perplexity from a summed loss."""
    nats = nats_sum / max(count, 1)
    return {"chars": count, "nats_per_char": nats, "bits_per_char": nats / math.log(2),
            "perplexity": math.exp(nats)}
