"""The Numba CPU backend held to reference.py: loss, every gradient, carried state, step logits."""
import numpy as np
import pytest

from charrnn import reference as ref
from charrnn.dropout import masks as dropout_masks, recurrent_seed, zoneout_masks
from charrnn.backends.cpu import CpuBackend, CpuTuning
from charrnn.model import init_params, param_shapes
from tiny_models import random_case, tiny_config


def _rel(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _check(cfg, T, B, dtype, tol, seed=0, drop_seed=None, tuning=CpuTuning()):
    p64, x, y, state = random_case(cfg, T, B, np.float64, seed)
    drop_seed = seed if drop_seed is None else drop_seed
    masks = None
    if cfg.dropout:
        masks = dropout_masks(drop_seed, (cfg.layers, T, B, cfg.hidden), cfg.dropout, np.float64)
    rmasks = None
    if cfg.recurrent_dropout:
        rmasks = dropout_masks(recurrent_seed(drop_seed), (cfg.layers, T, B, cfg.hidden), cfg.recurrent_dropout,
                               np.float64)
    zmasks = None
    if cfg.zoned:
        zmasks = zoneout_masks(drop_seed, (cfg.layers, T, B, cfg.hidden), (cfg.zoneout_cell, cfg.zoneout_hidden),
                               np.float64)
    loss, cache, s_ref = ref.forward(p64, cfg, x, y, state, masks, rmasks, zmasks)
    g_ref = p64.like()
    ref.backward(p64, g_ref, cfg, cache, 1.0 / (T * B))

    be = CpuBackend(cfg, p64.astype(dtype), tuning=tuning)
    got, s_got = be.train_step(x, y, state.astype(dtype), dropout_seed=drop_seed)
    assert abs(got - loss) / loss < tol
    assert _rel(s_got, s_ref) < tol
    for name, _ in param_shapes(cfg):
        assert _rel(be.grad[name], g_ref[name]) < tol, name
    if cfg.zoned or cfg.recurrent_dropout or cfg.dropout:   # no masks: scoring's model (zoneout's expectation)
        loss, cache, s_ref = ref.forward(p64, cfg.scoring(), x, y, state)
        g_ref = p64.like()
        ref.backward(p64, g_ref, cfg.scoring(), cache, 1.0 / (T * B))
        got, s_got = be.train_step(x, y, state.astype(dtype), dropout_seed=drop_seed, noise=False)
        assert abs(got - loss) / loss < tol and _rel(s_got, s_ref) < tol
        for name, _ in param_shapes(cfg):
            assert _rel(be.grad[name], g_ref[name]) < tol, name
    loss, _, s_ref = ref.forward(p64, cfg, x, y, state)              # scoring: no masks either
    got_eval, s_eval = be.loss(x, y, state.astype(dtype))
    assert abs(got_eval - loss) / loss < tol
    assert _rel(s_eval, s_ref) < tol
    logits_ref, _, s1_ref = ref.forward(p64, cfg, x[:1], None, state)
    logits, s1 = be.step(x[0], state.astype(dtype))
    assert _rel(logits, logits_ref[0]) < tol and _rel(s1, s1_ref) < tol


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
@pytest.mark.parametrize("L", [1, 2, 3])
@pytest.mark.parametrize("B", [1, 5])
@pytest.mark.parametrize("T,H", [(1, 3), (4, 8), (9, 5)])
def test_lstm_matches_reference(dtype, tol, L, B, T, H):
    _check(tiny_config(vocab_size=7, hidden=H, layers=L), T, B, dtype, tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("activation", ["tanh", "softsign"])
@pytest.mark.parametrize("L,B", [(1, 1), (2, 3)])
def test_every_cell_and_activation_matches_reference(dtype, tol, cell, activation, L, B):
    _check(tiny_config(vocab_size=6, hidden=5, layers=L, cell=cell, activation=activation), 6, B, dtype, tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_embedding_and_dropout_match_reference(dtype, tol, cell):
    cfg = tiny_config(vocab_size=6, hidden=5, layers=2, cell=cell, embed=4, dropout=0.25)
    _check(cfg, 5, 3, dtype, tol, seed=3)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
@pytest.mark.parametrize("activation", ["tanh", "softsign"])
@pytest.mark.parametrize("L,B,embed,dropout,rdrop,zc,zh", [
    (1, 1, 0, 0.0, 0.0, 0.0, 0.0), (2, 3, 0, 0.0, 0.0, 0.0, 0.0), (2, 3, 4, 0.25, 0.0, 0.0, 0.0),
    (2, 3, 0, 0.0, 0.3, 0.0, 0.0), (2, 3, 4, 0.25, 0.5, 0.0, 0.0), (1, 1, 0, 0.0, 0.0, 0.5, 0.0),
    (2, 3, 0, 0.0, 0.0, 0.0, 0.3), (2, 3, 4, 0.25, 0.3, 0.5, 0.1)])
def test_layer_normalised_lstm_matches_reference(dtype, tol, activation, L, B, embed, dropout, rdrop, zc, zh):
    """norm "layer": the window (training and evaluation) and the sampling step, every gradient
    the gains' and the cell bias's included, with and without recurrent dropout and zoneout
    (its masks in training; without noise, in scoring and sampling, its expectation)."""
    cfg = tiny_config(vocab_size=6, hidden=5, layers=L, activation=activation, embed=embed, dropout=dropout,
                      norm="layer", recurrent_dropout=rdrop, zoneout_cell=zc, zoneout_hidden=zh)
    _check(cfg, 6, B, dtype, tol, seed=2)


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "softsign"])
@pytest.mark.parametrize("B,H", [(5, 3), (20, 21)])
def test_lstm_recurrence_plain_and_transposed_both_match_reference(transposed, activation, B, H):
    """Wide layers at narrow batches run the recurrent products transposed; here both ways are
    forced on small shapes (21 and 84 are not multiples of the 16-wide transpose tiles)."""
    tuning = CpuTuning(transposed_min_h=1 if transposed else 1 << 30, transposed_max_b=1 << 30)
    cfg = tiny_config(vocab_size=7, hidden=H, layers=2, activation=activation)
    assert CpuBackend(cfg, init_params(cfg, np.random.default_rng(0)), tuning=tuning)._transposed(B) == transposed
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
        _check(cfg, 6, B, dtype, tol, tuning=tuning)


_DETERMINISM = """
import hashlib, sys
import numpy as np
from charrnn.backends.cpu import CpuBackend
from charrnn.model import ModelConfig, init_params
cfg = ModelConfig(vocab_size=65, hidden=128, layers=2, dropout=0.1, init="uniform")
r = np.random.default_rng(0)
be = CpuBackend(cfg, init_params(cfg, r))
x, y = r.integers(0, 65, (50, 50)), r.integers(0, 65, (50, 50))
state = be.zero_state(50)
h = hashlib.sha256()
for i in range(3):
    loss, state = be.train_step(x, y, state, dropout_seed=i)
    h.update(np.float64(loss).tobytes() + be.grad.flat.tobytes() + state.tobytes())
print(h.hexdigest(), be._lanes_for(50, 50))
"""


def test_training_steps_are_bit_identical_across_processes():
    """Three real-size training windows (2x128, 50x50, dropout: on two threads the lanes,
    whose tasks finish in a different order every run) give the same loss, gradients and state
    bit for bit in two separate processes."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, CHARRNN_THREADS="2")
    runs = [subprocess.run([sys.executable, "-c", _DETERMINISM], capture_output=True, text=True, env=env,
                           timeout=300, check=True).stdout.split() for _ in range(2)]
    assert runs[0] == runs[1]
    assert runs[0][1] == "2"                    # the lanes ran


@pytest.fixture
def lanes_forced(monkeypatch):
    """force(n): a tuning with n lanes (or the single-lane path) and short chunks whatever this
    machine's core count, and the list of task graphs run, so a test knows which path it checked."""
    import charrnn.backends.cpu as cpu
    import charrnn.backends.cpu_window as cpu_window
    graphs = []
    real = cpu.run_graph
    for module in (cpu, cpu_window):           # the optimizer's and the windows' graphs
        monkeypatch.setattr(module, "run_graph", lambda pool, tasks: (graphs.append(pool.n), real(pool, tasks)))

    def force(n):
        graphs.clear()
        return graphs, CpuTuning(lanes=n, lane_chunks=3)
    return force


@pytest.mark.parametrize("n_lanes", [1, 2, 3])
@pytest.mark.parametrize("cfg", [
    tiny_config(vocab_size=7, hidden=5, layers=2),
    tiny_config(vocab_size=7, hidden=6, layers=3, activation="softsign"),
    tiny_config(vocab_size=6, hidden=5, layers=2, embed=4, dropout=0.25),
    tiny_config(vocab_size=6, hidden=4, layers=3, embed=4, dropout=0.1),
    tiny_config(vocab_size=7, hidden=5, layers=2, cell="gru", embed=4, dropout=0.25),
    tiny_config(vocab_size=7, hidden=6, layers=3, cell="rnn", activation="softsign", dropout=0.1),
    tiny_config(vocab_size=7, hidden=5, layers=2, norm="layer", dropout=0.25),
    tiny_config(vocab_size=7, hidden=5, layers=3, norm="layer", dropout=0.1, recurrent_dropout=0.4),
    tiny_config(vocab_size=7, hidden=5, layers=2, norm="layer", dropout=0.1, zoneout_cell=0.5, zoneout_hidden=0.2),
], ids=["2x5", "3x6-softsign", "2x5-embed-dropout", "3x4-embed-dropout", "gru-2x5-embed-dropout",
        "rnn-3x6-softsign-dropout", "layer-norm-2x5-dropout", "layer-norm-3x5-recurrent-dropout",
        "layer-norm-2x5-zoneout"])
def test_stacked_models_on_lanes_and_on_one_thread_both_match_reference(lanes_forced, n_lanes, cfg):
    """A stacked model's window runs as a task graph on several lanes (chunks of steps, layers
    side by side) or, on one lane, as one chunk per layer; both must give the reference's loss,
    gradients and state. T=8 in chunks of 2-3 steps puts chunk boundaries inside the window."""
    graphs, tuning = lanes_forced(n_lanes)
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
        _check(cfg, 8, 3, dtype, tol, seed=5, tuning=tuning)
    for T, B in ((1, 1), (2, 5), (9, 1)):      # one chunk; one step per chunk; one stream
        _check(cfg, T, B, np.float64, 1e-9, seed=T, tuning=tuning)
    if n_lanes > 1:
        assert graphs and set(graphs) == {n_lanes}
    else:
        assert graphs == []


@pytest.mark.parametrize("n_lanes", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "lnlstm"])
def test_masks_computed_in_the_kernels_are_the_references_for_any_window_seed(lanes_forced, n_lanes, cell):
    """The kernels hash each element's mask where they apply it; in float64 a single element
    masked differently from charrnn.dropout.masks would move the loss or a gradient by far more
    than 1e-9. Seeds up to the trainer's 2^62 and chunk boundaries inside the window."""
    graphs, tuning = lanes_forced(n_lanes)
    ln = cell == "lnlstm"
    cfg = tiny_config(vocab_size=6, hidden=5, layers=3, cell=cell.replace("ln", ""), dropout=0.5,
                      norm="layer" if ln else "none", recurrent_dropout=0.5 if ln else 0.0,
                      zoneout_cell=0.5 if ln else 0.0, zoneout_hidden=0.25 if ln else 0.0)
    for drop_seed in (0, 977, (1 << 62) - 1):
        _check(cfg, 7, 3, np.float64, 1e-9, seed=1, drop_seed=drop_seed, tuning=tuning)
    assert bool(graphs) == (n_lanes > 1)


def test_optimizer_step_on_lanes_equals_the_serial_update(lanes_forced):
    """The lanes split clipping and the update rule over slices of the buffer; given the same
    gradient, the norm and the new weights are bit for bit those of the one-thread path."""
    from charrnn.optim import Optimizer
    cfg = tiny_config(vocab_size=9, hidden=8, layers=2)
    p = init_params(cfg, np.random.default_rng(0))
    grads = np.random.default_rng(1).normal(size=(3, p.flat.size)).astype(np.float32)
    results = []
    for n in (1, 2):
        graphs, tuning = lanes_forced(n)
        be = CpuBackend(cfg, p.astype(np.float32), tuning=tuning)
        opt = Optimizer("adam", be.p.flat.size, weight_decay=1e-3)
        norms = []
        for g in grads:
            be.grad.flat[:] = g
            norms.append(be.optimizer_step(opt, 0.01, ("norm", 20.0)))
        results.append((norms, be.p.flat.copy(), opt.state["m"].copy()))
        assert bool(graphs) == (n > 1)
    assert results[0][0] == results[1][0]
    assert any(nm > 20.0 for nm in results[0][0])           # clipping happened
    assert np.array_equal(results[0][1], results[1][1]) and np.array_equal(results[0][2], results[1][2])


def test_lanes_are_chosen_only_for_stacked_models_with_chunks_big_enough_to_pay_for_them(monkeypatch):
    """2 threads: lanes for a stacked model whose chunk tasks are large; BLAS threading for one
    layer, for more threads than layers, and for tiny chunks (measured slower). The chunk's
    size counts the cell's gate blocks: an RNN's chunk is a quarter of an LSTM's."""
    from charrnn.backends import cpu_kernels as K
    monkeypatch.setattr(K, "blas_threads", lambda: 2)

    def be(tuning=CpuTuning(), **kw):
        cfg = tiny_config(vocab_size=65, **kw)
        return CpuBackend(cfg, init_params(cfg, np.random.default_rng(0)), tuning=tuning)
    assert be(hidden=128, layers=2)._lanes_for(50, 50) == 2
    assert be(hidden=128, layers=2)._lanes_for(256, 1) == 2           # evaluation, one stream
    assert be(hidden=128, layers=2)._lanes_for(8, 1) == 1             # chunks of one step of a matrix-vector product
    assert be(hidden=32, layers=2)._lanes_for(50, 16) == 1
    assert be(hidden=512, layers=1)._lanes_for(100, 64) == 1
    assert be(hidden=512, layers=2, cell="gru")._lanes_for(100, 64) == 2
    assert be(hidden=128, layers=2, cell="rnn")._lanes_for(50, 16) == 1
    assert be(hidden=128, layers=2, cell="lstm")._lanes_for(50, 16) == 2
    assert be(hidden=512, layers=3)._lanes_for(100, 32) == 2
    assert be(hidden=512, layers=2)._lanes_for_update() == 2
    assert be(hidden=32, layers=2)._lanes_for_update() == 1
    monkeypatch.setattr(K, "blas_threads", lambda: 3)
    assert be(hidden=512, layers=2)._lanes_for(100, 64) == 1
    assert be(CpuTuning(lanes_min_chunk_macs=0), hidden=512, layers=3)._lanes_for(100, 64) == 3


@pytest.mark.parametrize("cell", ["lstm", "gru", "lnlstm"])
def test_shares_of_the_streams_sum_to_the_whole_batch_step(cell):
    """A data-parallel rank's train_step(streams=(lo, B)): the shares' losses and gradients add
    up to one step over all B streams (same dropout masks, recurrent ones too, the same 1/(T*B)
    scale)."""
    ln = cell == "lnlstm"
    cfg = tiny_config(vocab_size=7, hidden=4, layers=2, cell=cell.replace("ln", ""), embed=3, dropout=0.4,
                      norm="layer" if ln else "none", recurrent_dropout=0.3 if ln else 0.0)
    p64, x, y, state = random_case(cfg, 5, 5, np.float64)
    whole = CpuBackend(cfg, p64)
    loss, s_whole = whole.train_step(x, y, state, 99)
    part = CpuBackend(cfg, p64.astype(np.float64))
    total, grad, states = 0.0, np.zeros_like(p64.flat), []
    for lo, hi in ((0, 2), (2, 5)):
        lp, s = part.train_step(x[:, lo:hi], y[:, lo:hi], state[:, :, lo:hi], 99, streams=(lo, 5))
        total += lp
        grad += part.grad.flat
        states.append(s)
    assert abs(total - loss) <= 1e-12 * loss
    assert _rel(grad, whole.grad.flat) < 1e-12
    np.testing.assert_allclose(np.concatenate(states, axis=2), s_whole, rtol=0, atol=1e-14)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradients_go_to_the_reduce_buffer_asked_for_after_the_first_window(cell):
    """A data-parallel trainer asks for the all-reduce buffer (the gradient, then its own values)
    after the first windows: the next windows write their gradient into its head, and
    reduce_gradient hands the whole buffer to the reduction, whose sum the update then uses."""
    from charrnn.optim import Optimizer
    cfg = tiny_config(vocab_size=7, hidden=5, layers=2, cell=cell, embed=3, dropout=0.2)
    p64, x, y, state = random_case(cfg, 4, 3, np.float64)
    want = CpuBackend(cfg, p64.astype(np.float64))
    want.train_step(x, y, state, 7)
    be = CpuBackend(cfg, p64.astype(np.float64))
    be.train_step(x, y, state, 7)
    packed = be.reduce_buffer(2)
    be.train_step(x, y, state, 7)
    assert packed.size == p64.flat.size + 2 and np.any(want.grad.flat)
    assert np.array_equal(packed[:-2], want.grad.flat) and np.array_equal(be.grad.flat, want.grad.flat)
    seen = []
    be.reduce_gradient(lambda buf: (seen.append(buf), buf.__imul__(2)))      # "two ranks" of the same
    assert len(seen) == 1 and seen[0] is packed and np.array_equal(be.grad_host().flat, 2 * want.grad.flat)
    want.grad.flat[:] *= 2
    assert be.optimizer_step(Optimizer("sgd", packed.size - 2, np.float64), 0.1, ("none", 0.0)) == \
        want.optimizer_step(Optimizer("sgd", packed.size - 2, np.float64), 0.1, ("none", 0.0))
    assert np.array_equal(be.params_host().flat, want.params_host().flat)


@pytest.mark.parametrize("cell,embed,norm", [("lstm", 0, "none"), ("lstm", 6, "none"), ("gru", 0, "none"),
                                             ("rnn", 0, "none"), ("lstm", 0, "layer"), ("lstm", 6, "layer")])
def test_step_rows_gives_each_row_bit_identically_alone_or_in_any_batch(cell, embed, norm):
    """charrnn serve batches unrelated requests: a row must not depend on its neighbours or their
    number (BLAS, which step() uses above a few rows, blocks differently for different batches)."""
    cfg = tiny_config(vocab_size=11, hidden=40, layers=2, cell=cell, embed=embed, norm=norm)
    p, x, _, state = random_case(cfg, 1, 37, np.float32)
    be = CpuBackend(cfg, p.astype(np.float32))
    state = state.astype(np.float32)
    logits, new = be.step_rows(x[0], state)
    for lo, hi in ((0, 1), (3, 4), (5, 13), (36, 37)):
        l_part, n_part = be.step_rows(x[0, lo:hi], state[:, :, lo:hi])
        assert np.array_equal(l_part, logits[lo:hi]) and np.array_equal(n_part, new[:, :, lo:hi])
    one, _ = be.step(x[0, :1], state[:, :, :1])          # one row: the sampler's own step
    assert np.array_equal(one, logits[:1])
    np.testing.assert_allclose(be.step(x[0], state)[0], logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("embed", [0, 6])
def test_step_rows_split_over_two_lanes_gives_the_bits_of_one_lane(embed):
    """A large batch's rows run in two halves on two lanes (when two BLAS threads own the cores);
    the halves' rows must come out as the whole batch's on one thread, every split point."""
    from charrnn.backends import cpu_kernels as K

    cfg = tiny_config(vocab_size=11, hidden=40, layers=2, cell="lstm", embed=embed)
    p, x, _, state = random_case(cfg, 1, 37, np.float32)
    state = state.astype(np.float32)
    whole = CpuBackend(cfg, p.astype(np.float32), tuning=CpuTuning(rows_split_min=1 << 30))
    want = whole.step_rows(x[0], state)
    threads = K.blas_threads()
    if threads < 2 and not K.set_blas_threads(2):
        pytest.skip("one BLAS thread and no way to set two: step_rows does not split")
    try:
        split = CpuBackend(cfg, p.astype(np.float32), tuning=CpuTuning(rows_split_min=2))
        for B in (2, 3, 17, 37):
            got = split.step_rows(x[0, :B], state[:, :, :B])
            assert np.array_equal(got[0], want[0][:B]) and np.array_equal(got[1], want[1][:, :, :B])
    finally:
        if threads < 2:
            K.set_blas_threads(threads)
