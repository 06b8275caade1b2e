"""charrnn/step.py: the one training step (forward, loss, backward, reduction, guards, update)
that the trainer, lr-find and the budget probe take."""
import math

import numpy as np
import pytest

from charrnn.backends.cpu import CpuBackend
from charrnn.model import init_params
from charrnn.optim import Optimizer
from charrnn.step import train_step
from tiny_models import random_case, tiny_config


def _backend(seed=0):
    cfg = tiny_config(vocab_size=7, hidden=5, layers=2, cell="lstm", dropout=0.2)
    be = CpuBackend(cfg, init_params(cfg, np.random.default_rng(seed), np.float64))
    _, x, y, state = random_case(cfg, 4, 3, np.float64, seed)
    return be, x, y, state


def test_a_step_is_the_backends_train_step_then_its_clipped_update():
    be, x, y, state = _backend()
    want, _, _, _ = _backend()
    opt_a, opt_b = (Optimizer("adam", be.p.flat.size, np.float64) for _ in range(2))
    st = train_step(be, opt_a, x, y, state, 0.01, ("norm", 0.1), dropout_seed=5)
    loss, s = want.train_step(x, y, state, 5)
    norm = want.optimizer_step(opt_b, 0.01, ("norm", 0.1))
    assert st.fault is None and (st.loss, st.lr, st.grad_norm) == (loss, 0.01, norm)
    assert np.array_equal(st.state, s) and np.array_equal(be.p.flat, want.p.flat)


def test_the_rate_is_read_after_the_reduction_and_before_update_sees_the_old_weights():
    be, x, y, state = _backend()
    calls, before = [], be.p.flat.copy()

    def reduce(loss):
        calls.append(("reduce", loss))
        return 2 * loss

    def rate():
        calls.append(("rate",))
        return 0.01

    def look():
        calls.append(("before_update", np.array_equal(be.p.flat, before)))
    st = train_step(be, Optimizer("sgd", be.p.flat.size, np.float64), x, y, state, rate, ("none", 0.0),
                    streams=(0, 3), reduce=reduce, before_update=look)
    assert [c[0] for c in calls] == ["reduce", "rate", "before_update"] and calls[2][1]
    assert st.loss == 2 * calls[0][1] and not np.array_equal(be.p.flat, before)


def test_a_non_finite_loss_stops_the_step_before_the_update():
    be, x, y, state = _backend()
    be.p["out.W"][...] = np.inf
    weights = be.p.flat.copy()
    st = train_step(be, Optimizer("adam", be.p.flat.size, np.float64), x, y, state, 0.01, ("norm", 1.0),
                    before_update=lambda: pytest.fail("no update after a bad loss"))
    assert st.fault == "the loss" and not math.isfinite(st.loss)
    assert np.array_equal(be.p.flat, weights, equal_nan=True)


def test_a_reduction_that_brings_a_bad_loss_stops_every_rank_alike():
    be, x, y, state = _backend()
    st = train_step(be, Optimizer("sgd", be.p.flat.size, np.float64), x, y, state, 0.01, ("none", 0.0),
                    reduce=lambda loss: math.nan)
    assert st.fault == "the loss"


class _Raises:
    """A backend whose update meets inf/inf in a compiled kernel."""

    def train_step(self, x, y, state, dropout_seed=0):
        return 1.0, state

    def optimizer_step(self, opt, lr, clip):
        raise ZeroDivisionError("inf/inf")


def test_a_kernel_that_raises_on_inf_counts_as_a_non_finite_gradient():
    st = train_step(_Raises(), None, None, None, "s", 0.5, ("none", 0.0))
    assert (st.fault, st.loss, st.state, st.lr) == ("the gradient", 1.0, "s", 0.5) and math.isnan(st.grad_norm)
