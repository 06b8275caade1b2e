"""Minibatches the char-rnn way: the training codes are cut into B contiguous streams and read
in windows of T steps; row b of window k continues row b of window k-1, so the hidden state
carries across windows (truncated BPTT) and is reset at each epoch.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class Batches:
    """Windows x, y of shape (T, B) over one split; y is x shifted by one character."""

    def __init__(self, codes: np.ndarray, batch: int, seq_len: int,
                 warn: Callable[[str], None] | None = None, share: tuple[int, int] = (0, 1)):
        n = len(codes) - 1            # predictions available
        if n < 1:
            raise ValueError("the training text needs at least two characters")
        B, T = batch, seq_len
        if n < B * T:
            B = max(1, n // T)
            if n < T:
                T = n
            if warn:
                warn(f"training split has {n + 1} characters, too few for {batch} x {seq_len}; "
                     f"using batch {B}, sequence length {T}")
        self.batch, self.seq_len = B, T
        self.stream_len = n // B
        self.n_windows = self.stream_len // T
        # (B, stream_len + 1) view: row b is the b-th contiguous stream, with its next character
        self.codes = codes
        # data parallel: rank r of n reads only streams lo..hi-1, so only their part of a
        # memory-mapped corpus is ever paged in; `batch` stays the global B
        r, n = share
        if B < n:
            raise ValueError(f"--batch-size {B} is smaller than the {n} processes: each needs a stream")
        self.lo, self.hi = r * B // n, (r + 1) * B // n

    @property
    def local_batch(self) -> int:
        return self.hi - self.lo

    def window(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's streams of window k: (T, hi - lo) inputs and targets."""
        T, S = self.seq_len, self.stream_len
        start = np.arange(self.lo, self.hi) * S + k * T
        idx = start[None, :] + np.arange(T)[:, None]          # (T, B)
        return self.codes[idx].astype(np.int64), self.codes[idx + 1].astype(np.int64)

    def __len__(self) -> int:
        return self.n_windows
