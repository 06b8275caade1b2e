"""The CPU backend held to reference.py in the regimes trained models reach, not only near zero:
pre-activations of +-100, carried cell states of |c| up to 1e4, counter cells that grow without
bound, windows of hundreds of steps, one stream and large batches, and every path at the real
sizes that choose it (whole-window, transposed, lanes, one-stream evaluation, sampling).

Loss, every gradient and the final state must agree with the float64 reference within 1e-9
relative in float64 and 1e-4 in float32 (the largest difference over a tensor, relative to its
largest value). No case is chaotic: the float32 reference stays within 1e-4 of the float64 one
(`_oracle` asserts it), so the float32 fast path is held to the float64 reference throughout.
"""
from __future__ import annotations

import numpy as np
import pytest

from charrnn import reference as ref
from charrnn.dropout import masks as dropout_masks
from charrnn.backends import cpu_kernels as K
from charrnn.backends.cpu import CpuBackend, CpuTuning
from charrnn.model import ModelConfig, init_params, param_shapes
from charrnn.sample import Decoding, stream
from tiny_models import RefStep, carried_state, tiny_config, trained_like

TOL = {np.float64: 1e-9, np.float32: 1e-4}


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(float(np.max(np.abs(b))), 1e-30))


def _reference(p64, cfg, x, y, state, dtype, masks=None):
    """Loss, gradients (scaled by 1/(T B), as train_step's) and new state of the reference in dtype."""
    T, B = x.shape
    p = p64.astype(dtype)
    with np.errstate(over="ignore"):
        loss, cache, new_state = ref.forward(p, cfg, x, y, state.astype(dtype),
                                             None if masks is None else masks.astype(dtype))
        g = p.like()
        ref.backward(p, g, cfg, cache, 1.0 / (T * B))
    return float(loss), g, new_state


def _oracle(p64, cfg, x, y, state, dtype, masks=None):
    """The float64 reference. For a float32 comparison the case must not be chaotic: the float32
    reference itself has to agree with the float64 one within the float32 tolerance (every case
    here does, by the contracting recurrence of _trained_like), or the comparison would measure
    the amplification of rounding, not the fast path."""
    want = _reference(p64, cfg, x, y, state, np.float64, masks)
    if dtype == np.float32:
        assert _max_diff(_reference(p64, cfg, x, y, state, np.float32, masks), want, cfg) < TOL[np.float32]
    return want


def _max_diff(got, want, cfg) -> float:
    loss, g, s = got
    wl, wg, ws = want
    diffs = [abs(loss - wl) / abs(wl), _rel(s, ws)]
    diffs += [_rel(g[name], wg[name]) for name, _ in param_shapes(cfg)]
    return max(diffs)


def _train_step(be, x, y, state, dropout_seed=0):
    loss, s = be.train_step(x, y, state.astype(be.dtype), dropout_seed=dropout_seed)
    return loss, be.grad, s


def _check_train(cfg, p64, x, y, state, dtype, be=None, masks_seed=None):
    masks = None
    if cfg.dropout:
        T, B = x.shape
        masks = dropout_masks(masks_seed, (cfg.layers, T, B, cfg.hidden), cfg.dropout, np.float64)
    want = _oracle(p64, cfg, x, y, state, dtype, masks)
    be = be or CpuBackend(cfg, p64.astype(dtype))
    got = _train_step(be, x, y, state, 0 if masks_seed is None else masks_seed)
    assert _max_diff(got, want, cfg) < TOL[dtype]
    return be


def _check_loss(be, cfg, p64, x, y, state, dtype):
    wl, _, ws = _oracle(p64, cfg, x, y, state, dtype)
    loss, s = be.loss(x, y, state.astype(dtype))
    assert abs(loss - wl) / wl < TOL[dtype]
    assert _rel(s, ws) < TOL[dtype]


def _data(cfg, T, B, seed):
    r = np.random.default_rng(seed + 2)
    return r.integers(0, cfg.vocab_size, (T, B)), r.integers(0, cfg.vocab_size, (T, B))


# ---------------------------------------------------------------- saturated gates, huge states
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_counter_cells_that_grow_without_bound_match_the_reference(dtype):
    """The issue's single-cell case: i, f, g biases at +8 make c grow by ~1 a step; over 256
    steps |c| passes 44 (where tanh(c) used to become 0) and reaches ~250."""
    cfg = tiny_config(vocab_size=5, hidden=4, layers=1)
    p = init_params(cfg, np.random.default_rng(0), dtype=np.float64)
    H = cfg.hidden
    p["l0.b"][:3 * H] = 8.0
    x, y = _data(cfg, 256, 1, 0)
    state = np.zeros((1, 2, 1, H))
    be = _check_train(cfg, p, x, y, state, dtype)
    _check_loss(be, cfg, p, x, y, state, dtype)
    _, _, s = _reference(p, cfg, x, y, state, np.float64)
    assert np.max(np.abs(s[0, 1])) > 200 and np.min(np.abs(s[0, 0])) > 0.3   # h stays ~o, not 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("activation", ["tanh", "softsign"])
def test_pre_activations_of_a_hundred_and_states_of_ten_thousand_match_the_reference(dtype, cell, activation):
    cfg = tiny_config(vocab_size=9, hidden=16, layers=2, cell=cell, activation=activation)
    p = trained_like(cfg, 1, scale=60.0)
    x, y = _data(cfg, 64, 2, 1)
    state = carried_state(cfg, 2, 1, c_max=1e4)
    be = _check_train(cfg, p, x, y, state, dtype)
    _check_loss(be, cfg, p, x, y, state, dtype)
    with np.errstate(over="ignore"):
        _, cache, _ = ref.forward(p, cfg, x, None, state)
    pre = np.abs(cache["layers"][1][0] @ p["l1.Wx"])
    assert pre.max() > 100 and np.median(pre) < 50            # the regime this test claims


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B", [1, 2])
def test_windows_of_512_steps_match_the_reference(dtype, B):
    cfg = tiny_config(vocab_size=11, hidden=24, layers=2)
    p = trained_like(cfg, 2, scale=12.0)
    p["l1.b"][cfg.hidden:2 * cfg.hidden] = 20.0                  # layer 1 forgets nothing: c accumulates
    x, y = _data(cfg, 512, B, 2)
    state = carried_state(cfg, B, 2, c_max=100.0)
    be = _check_train(cfg, p, x, y, state, dtype)
    _check_loss(be, cfg, p, x, y, state, dtype)


# ---------------------------------------------------------------- every path at the sizes that choose it
@pytest.fixture
def two_blas_threads(monkeypatch):
    """The lanes' choice on a 2-core machine (this one and CI), whatever OpenBLAS reports."""
    monkeypatch.setattr(K, "blas_threads", lambda: 2)


def _spy_lanes(be: CpuBackend) -> list:
    """The lane count of every window `be` runs on the lanes (its _window calls on more than one)."""
    used = []
    real = be._window
    be._window = lambda *a: (a[5] > 1 and used.append(a[5]), real(*a))[1]      # (x, y, state, drop, train, n_lanes, ...)
    return used


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_default_model_training_and_evaluation_windows_interleaved_on_one_backend(dtype, two_blas_threads, monkeypatch):
    """A 2x128 model (the default before issue 19) at its real shapes: training windows of 50x50 (lanes, 8 chunks;
    per-step products above small_step_macs) interleaved with the evaluator's one-stream windows
    of 256 steps (lanes, matrix-vector steps below SMALL_M) on one backend, whose work buffers
    are kept between shapes, from trained-like weights and carried states."""
    cfg = tiny_config(vocab_size=65, hidden=128, layers=2, dropout=0.1)
    p = trained_like(cfg, 3, scale=6.0)
    be = CpuBackend(cfg, p.astype(dtype))
    assert be._lanes_for(50, 50) == 2 and be._lanes_for(256, 1) == 2
    assert 50 * 4 * 128 * 128 >= be.tuning.small_step_macs and 1 <= K.SMALL_M
    lanes_used = _spy_lanes(be)
    eval_cfg = ModelConfig(**{**cfg.to_dict(), "dropout": 0.0})
    for i in range(2):
        x, y = _data(cfg, 50, 50, 10 + i)
        _check_train(cfg, p, x, y, carried_state(cfg, 50, 10 + i, 50.0), dtype, be=be, masks_seed=i)
        x, y = _data(cfg, 256, 1, 20 + i)
        _check_loss(be, eval_cfg, p, x, y, carried_state(cfg, 1, 20 + i, 5e3), dtype)
    assert lanes_used == [2, 2, 2, 2]


@pytest.mark.parametrize("n_lanes,layers", [(1, 2), (2, 2), (3, 3)])
def test_lanes_at_one_to_three_lanes_match_the_reference_at_real_sizes(n_lanes, layers):
    """CpuTuning.lanes forces the lane count; the chunking is the real one (lane_chunks of a
    64-step window)."""
    tuning = CpuTuning(lanes=n_lanes)
    cfg = tiny_config(vocab_size=40, hidden=96, layers=layers, embed=16)
    p = trained_like(cfg, 4, scale=8.0)
    x, y = _data(cfg, 64, 16, 4)
    state = carried_state(cfg, 16, 4, 1e3)
    for dtype in (np.float64, np.float32):
        be = CpuBackend(cfg, p.astype(dtype), tuning=tuning)
        used = _spy_lanes(be)
        _check_train(cfg, p, x, y, state, dtype, be=be)
        assert used == ([] if n_lanes == 1 else [n_lanes])


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_stacked_gru_and_rnn_on_two_lanes_match_the_reference_at_real_sizes(cell):
    """The window driver runs every cell on the lanes: 2x96 with an embedding and dropout,
    64 steps of 16 streams in the real chunking, from a carried state and weights whose
    pre-activations reach +-100."""
    cfg = tiny_config(vocab_size=40, hidden=96, layers=2, embed=16, cell=cell, dropout=0.2)
    p = trained_like(cfg, 9, scale=10.0)
    x, y = _data(cfg, 64, 16, 9)
    state = carried_state(cfg, 16, 9, 0.0)
    assert np.abs(p["embed"][x] @ p["l0.Wx"] + p["l0.b"]).max() > 100       # the regime claimed
    for dtype in (np.float64, np.float32):
        be = CpuBackend(cfg, p.astype(dtype), tuning=CpuTuning(lanes=2))
        used = _spy_lanes(be)
        _check_train(cfg, p, x, y, state, dtype, be=be, masks_seed=5)
        assert used == [2]


@pytest.mark.parametrize("B,transposed", [(32, True), (64, True), (128, False)])
def test_wide_layers_take_the_transposed_product_by_their_real_thresholds(B, transposed):
    """H = 256 at B <= 64 runs the recurrent products transposed (CpuTuning.transposed_min_h/max_b); B = 128
    the plain way. One layer, so the lanes stay out of it."""
    cfg = tiny_config(vocab_size=30, hidden=256, layers=1)
    p = trained_like(cfg, 5, scale=4.0)
    be = CpuBackend(cfg, p.astype(np.float32))
    assert be._transposed(B) == transposed
    x, y = _data(cfg, 12, B, 5)
    state = carried_state(cfg, B, 5, 1e4)
    _check_train(cfg, p, x, y, state, np.float32, be=be)
    _check_train(cfg, p, x, y, state, np.float64)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_gru_and_rnn_at_batch_50_and_one_stream_evaluation_match_the_reference(cell):
    cfg = tiny_config(vocab_size=30, hidden=64, layers=2, cell=cell)
    p = trained_like(cfg, 6, scale=20.0)
    for T, B in ((50, 50), (256, 1)):
        x, y = _data(cfg, T, B, 6)
        state = carried_state(cfg, B, 6, 0.0)
        for dtype in (np.float64, np.float32):
            be = _check_train(cfg, p, x, y, state, dtype)
            _check_loss(be, cfg, p, x, y, state, dtype)


# ---------------------------------------------------------------- sampling
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("n,temp,top_k", [(1, 0.8, 0), (3, 1.0, 5)])
def test_sampling_loop_draws_what_the_reference_draws_from_saturated_weights(cell, n, temp, top_k):
    """generate (the compiled LSTM loop; the per-step loop for GRU) against the reference stepped
    in NumPy: same codes, same log-probabilities, over 300 steps that drive |c| past 44."""
    cfg = tiny_config(vocab_size=12, hidden=8, layers=2, cell=cell)
    p = trained_like(cfg, 7, scale=10.0)
    if cell == "lstm":
        p["l1.b"][:3 * cfg.hidden] = 8.0                          # counter cells in the top layer
    prime = np.array([1, 4, 2, 0])
    dec = Decoding(batch=n, length=300, temperature=temp, top_k=top_k, seed=3)
    fast = [(st.codes.copy(), st.logp.copy()) for st in
            stream(CpuBackend(cfg, p.astype(np.float64)), prime, dec)]
    slow = [(st.codes.copy(), st.logp.copy()) for st in stream(RefStep(cfg, p), prime, dec)]
    np.testing.assert_array_equal([c for c, _ in fast], [c for c, _ in slow])
    np.testing.assert_allclose([lp for _, lp in fast], [lp for _, lp in slow], rtol=1e-9, atol=1e-9)
    assert len(np.unique([c for c, _ in fast])) > 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_sampling_step_from_a_state_of_ten_thousand_matches_the_reference(dtype):
    cfg = tiny_config(vocab_size=20, hidden=32, layers=3, embed=8)
    p = trained_like(cfg, 8, scale=30.0)
    state = carried_state(cfg, 64, 8, 1e4)
    codes = np.random.default_rng(8).integers(0, 20, 64)
    logits, s = CpuBackend(cfg, p.astype(dtype)).step(codes, state.astype(dtype))
    want_logits, want_s = RefStep(cfg, p).step(codes, state)
    assert _rel(logits, want_logits) < TOL[dtype] and _rel(s, want_s) < TOL[dtype]


# ---------------------------------------------------------------- one stream on cpu_batch1's workers
B1_TWO = CpuTuning(batch1_min_h=0, batch1_parts_min_h=0, batch1_parts=2)   # its kernels and two workers at any width


@pytest.mark.slow         # float32 evaluation takes these kernels only when CpuTuning asks (compiling: ~20 s)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("embed", [0, 8])
def test_batch1_workers_match_the_reference_from_states_of_ten_thousand_over_512_steps(dtype, embed):
    """cpu_batch1's evaluation window, one stream on two workers (40 units: blocks of 32 and 8),
    over 512 steps from cell states up to 1e4, pre-activations up to +-60, a top layer that
    forgets nothing; two windows in a row carry the state."""
    cfg = tiny_config(vocab_size=11, hidden=40, layers=2, embed=embed)
    p = trained_like(cfg, 9, scale=12.0)
    p["l1.b"][cfg.hidden:2 * cfg.hidden] = 20.0
    be = CpuBackend(cfg, p.astype(dtype), tuning=B1_TWO)
    state = carried_state(cfg, 1, 9, 1e4)
    for i in range(2):
        x, y = _data(cfg, 512 if i == 0 else 100, 1, 9 + i)
        _check_loss(be, cfg, p, x, y, state, dtype)
        _, _, state = _reference(p, cfg, x, y, state, np.float64)
    assert be._batch1.parts == 2 and 2 in be._batch1.pick.rate    # the path this test claims


@pytest.mark.parametrize("weights", ["bf16", pytest.param("f16", marks=pytest.mark.slow)])
def test_batch1_with_16_bit_weights_matches_the_reference_on_the_same_rounded_weights(weights):
    """16-bit weights: the backend's loss and state are the float64 reference's on the weights
    rounded to 16 bits (what the words hold), within float32's tolerance, from huge states."""
    from charrnn.backends import cpu_batch1 as B1
    cfg = tiny_config(vocab_size=11, hidden=40, layers=2)
    p = trained_like(cfg, 10, scale=12.0)
    p.flat[:] = B1.widen(B1.narrow(p.flat.astype(np.float32), weights))
    be = CpuBackend(cfg, p.astype(np.float32), tuning=B1_TWO, weights=weights)
    x, y = _data(cfg, 300, 1, 10)
    _check_loss(be, cfg, p, x, y, carried_state(cfg, 1, 10, 1e4), np.float32)


@pytest.mark.parametrize("weights", ["bf16", pytest.param("f16", marks=pytest.mark.slow)])
def test_batch1_16_bit_sampling_draws_what_the_reference_draws_on_the_rounded_weights(weights):
    """generate with 16-bit weights (cpu_batch1's sampling kernel on two workers) against the
    float64 reference stepped in NumPy on the same rounded weights: the same codes over 300
    steps that drive |c| past 44, log-probabilities within float32's rounding."""
    from charrnn.backends import cpu_batch1 as B1
    cfg = tiny_config(vocab_size=12, hidden=40, layers=2, embed=6)
    p = trained_like(cfg, 7, scale=10.0)
    p["l1.b"][:3 * cfg.hidden] = 8.0
    p.flat[:] = B1.widen(B1.narrow(p.flat.astype(np.float32), weights))
    prime = np.array([1, 4, 2, 0])
    dec = Decoding(batch=1, length=300, temperature=0.8, top_k=0, seed=3)
    be = CpuBackend(cfg, p.astype(np.float32), tuning=B1_TWO, weights=weights)
    fast = [(st.codes.copy(), st.logp.copy()) for st in stream(be, prime, dec)]
    slow = [(st.codes.copy(), st.logp.copy()) for st in stream(RefStep(cfg, p), prime, dec)]
    np.testing.assert_array_equal([c for c, _ in fast], [c for c, _ in slow])
    np.testing.assert_allclose([lp for _, lp in fast], [lp for _, lp in slow], rtol=1e-4, atol=1e-4)
    assert be._batch1.parts == 2 and 2 in be._batch1.gen_pick.rate and len(np.unique([c for c, _ in fast])) > 3
