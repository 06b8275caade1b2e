"""Averaged weights in training: an exponential moving average (EMA, Polyak averaging with a
forgetting factor) of the flat float32 weight buffer, kept beside the raw weights in the same
layout (model.param_offsets), saved in checkpoints as the tensor "average" and resumed exactly.

After optimizer step t (1, 2, ...) the average moves toward the new weights w_t:

    d_t = min(decay, (1 + t) / (10 + t))
    a_t = a_{t-1} + (1 - d_t) * (w_t - a_{t-1}),     a_0 = the weights the run started from

The ramp (1 + t) / (10 + t) keeps the first few hundred steps from dragging the random initial
weights along for thousands of steps (with decay 0.998 alone, 0.998^1000 = 13% of a_0 would
still be in the average after 1000 steps); from t = 4,491 on, d_t is the decay itself.

Why an EMA and not a tail average (Polyak-Ruppert's mean from some step on, AWD-LSTM's NT-ASGD):
a run under --minutes does not know when its tail starts, and NT-ASGD's trigger is tied to a
constant-rate SGD; the EMA needs neither, one buffer, and a single number whose meaning does
not change with the run's length. Under data parallelism every rank holds the same weights
after the all-reduced update, so each keeps its own average and no reduction is needed.
"""
from __future__ import annotations

import numpy as np

RAMP = 10.0          # d_t = (1 + t) / (RAMP + t) while that is below the decay


def decay_at(decay: float, step: int) -> float:
    """The forgetting factor d_t of optimizer step `step` (counted from 1)."""
    return min(decay, (1.0 + step) / (RAMP + step))


def update_(avg: np.ndarray, weights: np.ndarray, decay: float, step: int) -> None:
    """Move `avg` (float32, in place) toward `weights` after optimizer step `step`."""
    rate = np.float32(1.0 - decay_at(decay, step))
    # two passes through one scratch array: avg += rate * (weights - avg), rounded as written
    diff = np.subtract(weights, avg, dtype=np.float32)
    diff *= rate
    avg += diff
