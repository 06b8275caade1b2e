"""charrnn/backends/cpu_batch1.py: 16-bit words, the worker count's choice, the barrier's abort
and its help for a late worker, and seeded 16-bit sampling. The kernels against reference.py: tests/test_cpu_regimes.py."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from charrnn.backends import cpu_batch1 as B1
from charrnn.backends.cpu import CpuBackend, CpuTuning
from charrnn.decoding import Decoding
from tiny_models import tiny_config, trained_like

TWO = CpuTuning(batch1_parts_min_h=0, batch1_parts=2)


def test_bf16_rounds_to_nearest_even_and_keeps_nan_and_inf():
    one = 1.0
    ulp = 2.0 ** -7                                     # bf16's spacing at 1
    x = np.array([one, one + ulp / 2, one + 1.5 * ulp, one + ulp / 2 + 2 ** -20, -3.0, np.inf, -np.inf, np.nan,
                  3.0e38, 1e-40], np.float32)
    w = B1.widen(B1.narrow(x, "bf16"))
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w[:4], [one, one, one + 2 * ulp, one + ulp])   # ties to even, above half up
    assert w[4] == -3.0 and w[5] == np.inf and w[6] == -np.inf and np.isnan(w[7])
    assert np.isfinite(w[8]) and abs(w[8] / 3.0e38 - 1) < 2 ** -8
    assert w[9] == np.float32(2.0 ** -133)                # subnormal: bf16's nearest (its spacing there), not 0


def test_f16_words_are_ieee_half_and_out_of_range_weights_are_refused():
    x = np.random.default_rng(0).normal(0, 3, 1000).astype(np.float32)
    np.testing.assert_array_equal(B1.widen(B1.narrow(x, "f16")), x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="f16 range"):
        B1.narrow(np.array([1.0, 7e4], np.float32), "f16")


def test_units_split_at_multiples_of_16_and_cover_the_layer():
    for H in (8, 40, 256, 512, 1000):
        for parts in (1, 2, 3):
            cuts = [B1.part_bounds(p, parts, H) for p in range(parts)]
            assert cuts[0][0] == 0 and cuts[-1][1] == H
            assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
            assert all(j0 % 16 == 0 for j0, _ in cuts)


def test_pick_takes_the_faster_count_and_tries_the_other_less_often_each_time_it_loses():
    pick = B1.Pick(2, probe=4)
    assert pick.next() == 2
    pick.record(2, 100, 1.0)                              # two workers: 100 chars/s
    assert pick.next() == 1
    pick.record(1, 500, 1.0)                              # one: 500
    chosen = []
    for _ in range(40):
        p = pick.next()
        chosen.append(p)
        pick.record(p, 100 if p == 2 else 500, 1.0)
    tries = [i for i, p in enumerate(chosen) if p == 2]
    assert chosen.count(1) > 30 and len(tries) >= 2
    assert tries[1] - tries[0] > 4                        # the wait doubled after a lost try
    pick.rate[2] = 1000.0                                 # the machine got quiet
    assert pick.next() == 2


def test_a_worker_that_fails_releases_the_others_from_the_barrier():
    """Worker 1 raises before its first step; worker 0, already in the kernel, waits at the
    first barrier until the abort word frees it, and the error reaches the caller (no hang)."""
    cfg = tiny_config(vocab_size=7, hidden=32, layers=1)
    be = CpuBackend(cfg, trained_like(cfg, 0, 2.0).astype(np.float32), tuning=TWO, weights="bf16")
    x = np.zeros((50, 1), np.int64)
    be.loss(x, x, be.zero_state(1))                       # compiled, and the path taken
    b1, codes = be._batch1, np.zeros(50, np.int64)

    def fn(part, sync):
        if part == 1:
            raise RuntimeError("worker 1 failed")
        hs = np.zeros((1, 51, 32), np.float32)
        B1.lstm_window_part(0, 2, b1.flat, b1.wflat, b1.offs, -1, 0, b1.out_w, codes, codes, hs, hs.copy(),
                            np.empty((50, 128), np.float32), np.empty((50, 7), np.float32), np.empty(50), b1.kind,
                            b1.cells, sync, 10, b1._packs(2)[0])
    done = []
    t = threading.Thread(target=lambda: done.append(pytest.raises(RuntimeError, B1.run_parts, 2, fn)), daemon=True)
    t.start()
    t.join(60)
    assert done and "worker 1 failed" in str(done[0].value)


def test_a_late_worker_has_its_units_done_by_the_other_and_the_window_keeps_the_bits_of_one_worker(monkeypatch):
    """Worker 1 starts 0.3 s late: worker 0 claims its share of layer 1's input projections
    and does its share of every step (the barrier's help), worker 1 then finds every phase done
    and begins none itself; loss and state are the bits of one worker alone."""
    cfg = tiny_config(vocab_size=7, hidden=40, layers=2)           # blocks of 32 and 8 units
    p = trained_like(cfg, 4, 3.0).astype(np.float32)
    x = np.random.default_rng(4).integers(0, 7, (80, 1))
    y = np.random.default_rng(5).integers(0, 7, (80, 1))
    one = CpuBackend(cfg, p, tuning=CpuTuning(batch1_parts=1), weights="bf16")
    want = one.loss(x, y, one.zero_state(1))
    be = CpuBackend(cfg, p, tuning=TWO, weights="bf16")
    be.loss(x, y, be.zero_state(1))                                # compiled, and the path taken
    run_parts, words = B1.run_parts, []

    def late_partner(parts, fn):
        def slow(part, sync):
            words.append(sync)
            if part == 1:
                time.sleep(0.3)
            fn(part, sync)
        run_parts(parts, slow)
    monkeypatch.setattr(B1, "run_parts", late_partner)
    got = be.loss(x, y, be.zero_state(1))
    assert got[0] == want[0] and np.array_equal(got[1], want[1])
    began = words[0][B1.FIN + 8 * (2 * 2 + 1)]                     # the last step worker 1 began itself
    # ... none; all of its phases done: layer 0's 80 steps (one-hot: no projection phase), layer 1's projection and 80
    assert began == 0 and words[0][B1.FIN + 8] == 80 + 1 + 80


@pytest.mark.parametrize("weights", ["bf16", pytest.param("f16", marks=pytest.mark.slow)])
def test_seeded_16_bit_sampling_is_the_same_text_every_time_on_one_worker_or_two(weights):
    cfg = tiny_config(vocab_size=30, hidden=48, layers=2)
    p = trained_like(cfg, 3, 4.0).astype(np.float32)
    dec = Decoding(length=200, temperature=0.9, seed=11)
    runs = []
    for tuning in (TWO, TWO, CpuTuning(batch1_parts=1)):
        be = CpuBackend(cfg, p, tuning=tuning, weights=weights)
        runs.append([(int(c[0]), float(lp[0])) for c, lp in be.generate(np.array([2, 5, 1]), dec)])
    assert runs[0] == runs[1] == runs[2] and len({c for c, _ in runs[0]}) > 5


def test_16_bit_weights_refuse_training_and_other_cells():
    cfg = tiny_config(vocab_size=7, hidden=16, layers=1)
    be = CpuBackend(cfg, trained_like(cfg, 0, 2.0).astype(np.float32), weights="bf16")
    x = np.zeros((4, 2), np.int64)
    with pytest.raises(ValueError, match="not training"):
        be.train_step(x, x, be.zero_state(2))
    gru = tiny_config(vocab_size=7, hidden=16, layers=1, cell="gru")
    with pytest.raises(ValueError, match="LSTM"):
        CpuBackend(gru, trained_like(gru, 0, 2.0).astype(np.float32), weights="f16")
