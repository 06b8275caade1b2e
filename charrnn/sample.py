"""Drawing text from a trained model: priming, temperature, top-k, top-p (nucleus), argmax.

The generator yields one code per sequence per step; the caller decides how to print it.
Draws use NumPy's PCG64 seeded from --seed, so the same seed gives the same text.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np


def distribution(logits: np.ndarray, temp: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """Rows of probabilities from rows of logits after temperature, top-k and top-p filtering.
    temp 0 puts all mass on the argmax."""
    logits = np.asarray(logits, dtype=np.float64)
    if temp == 0:
        probs = np.zeros_like(logits)
        probs[np.arange(len(logits)), logits.argmax(axis=1)] = 1.0
        return probs
    z = logits / temp
    if top_k and top_k < z.shape[1]:
        kth = np.partition(z, -top_k, axis=1)[:, -top_k][:, None]
        z = np.where(z >= kth, z, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=1)
        keep_sorted = np.cumsum(sorted_p, axis=1) - sorted_p < top_p   # smallest set reaching top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One code per row by inverse-CDF sampling."""
    u = rng.random(len(probs))[:, None]
    cdf = np.cumsum(probs, axis=1)
    codes = (cdf < u * cdf[:, -1:]).sum(axis=1)
    return np.minimum(codes, probs.shape[1] - 1)


def prime_state(backend, codes: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Feed all but the last prime code through the model; returns (state, last codes)."""
    state = backend.zero_state(batch)
    for c in codes[:-1]:
        _, state = backend.step(np.full(batch, c, dtype=np.int64), state)
    return state, np.full(batch, codes[-1], dtype=np.int64)


def generate(backend, prime_codes: np.ndarray, length: int, temp: float = 1.0, seed: int | None = None,
             top_k: int = 0, top_p: float = 1.0, batch: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (codes (batch,), log-probabilities of those codes under the model) for `length`
    steps; length 0 means endless. The prime must hold at least one code."""
    rng = np.random.default_rng(seed)
    state, codes = prime_state(backend, np.asarray(prime_codes, dtype=np.int64), batch)
    n = 0
    while length == 0 or n < length:
        logits, state = backend.step(codes, state)
        probs = distribution(logits, temp, top_k, top_p)
        codes = draw(probs, rng)
        z = np.asarray(logits, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        logp = z[np.arange(batch), codes] - np.log(np.exp(z).sum(axis=1))
        yield codes, logp
        n += 1
