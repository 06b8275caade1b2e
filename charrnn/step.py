"""One training step, the one the trainer (train.Trainer), the learning-rate range test
(lrfind.lr_find) and the budget probe (budget.measure) all take: forward, loss and backward over a
window (Backend.train_step), the reduction over the ranks when data parallel, the non-finite
guards, then clipping and the update (Backend.optimizer_step).

A step that meets a non-finite loss or gradient stops there and says which: after a bad loss
nothing is updated; after a bad gradient the update may have run (the caller rolls back or
stops). Overflow is judged by the results' finiteness, not by NumPy warnings, and a compiled
kernel that raises ZeroDivisionError on inf/inf counts as non-finite too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

LOG2 = math.log(2)   # a loss in nats per character over LOG2 is bits per character


@dataclass
class Step:
    loss: float               # the window's summed loss (over every rank's streams when reduced)
    state: Any                # the carried state after the window (the one given when the forward failed)
    lr: float                 # the rate the update used (nan when it did not run)
    grad_norm: float          # the gradient's global norm before clipping (nan when not known)
    fault: str | None = None  # None, "the loss" or "the gradient": what was not finite


def train_step(be, opt, x, y, state, rate: float | Callable[[], float], clip: tuple[str, float],
               dropout_seed: int = 0, streams: tuple[int, int] | None = None,
               reduce: Callable[[float], float] | None = None,
               before_update: Callable[[], None] | None = None) -> Step:
    """One step of backend `be` with optimizer `opt` on the window x, y from `state`.
    rate: the learning rate, or a function that gives it once the loss is reduced (the trainer's
    schedule reads the elapsed time the reduction agrees on). streams, reduce: data parallel, this
    rank's share (offset, total) of the global batch and reduce(loss) -> the loss summed over the
    ranks, which sums the gradient too (every rank calls it, whatever its loss). before_update:
    called just before the update, the raw gradient and the old weights still in place."""
    share = {"streams": streams} if streams else {}
    new_state = state
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        try:
            loss, new_state = be.train_step(x, y, state, dropout_seed, **share)
        except (ZeroDivisionError, FloatingPointError):
            loss = math.nan
        if reduce is not None:
            loss = reduce(loss)
        if not math.isfinite(loss):
            return Step(loss, new_state, math.nan, math.nan, "the loss")
        lr = rate() if callable(rate) else rate
        if before_update is not None:
            before_update()
        try:
            gnorm = be.optimizer_step(opt, lr, clip)
        except (ZeroDivisionError, FloatingPointError):
            gnorm = math.nan
    return Step(loss, new_state, lr, gnorm, None if math.isfinite(gnorm) else "the gradient")
