"""The Numba CPU backend held to reference.py: loss, every gradient, carried state, step logits."""
import numpy as np
import pytest

from charrnn import reference as ref
from charrnn.backends.cpu import CpuBackend
from charrnn.model import ModelConfig, Params, init_params, param_shapes


def _case(cfg, T, B, dtype, seed=0):
    r = np.random.default_rng(seed)
    p = init_params(cfg, r, dtype=np.float64)
    p.flat[:] = r.normal(0, 0.3, p.flat.size)
    x = r.integers(0, cfg.vocab_size, (T, B))
    y = r.integers(0, cfg.vocab_size, (T, B))
    state = r.normal(0, 0.5, (cfg.layers, cfg.n_states, B, cfg.hidden))
    return p, x, y, state


def _rel(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30)


def _check(cfg, T, B, dtype, tol, seed=0):
    p64, x, y, state = _case(cfg, T, B, np.float64, seed)
    masks = None
    if cfg.dropout:
        masks = ref.dropout_masks(seed, (cfg.layers, T, B, cfg.hidden), cfg.dropout, np.float64)
    loss, cache, s_ref = ref.forward(p64, cfg, x, y, state, masks)
    g_ref = p64.like()
    ref.backward(p64, g_ref, cfg, cache, 1.0 / (T * B))

    be = CpuBackend(cfg, p64.astype(dtype))
    got, s_got = be.train_step(x, y, state.astype(dtype), dropout_seed=seed)
    assert abs(got - loss) / loss < tol
    assert _rel(s_got, s_ref) < tol
    for name, _ in param_shapes(cfg):
        assert _rel(be.grad[name], g_ref[name]) < tol, name
    if not cfg.dropout:
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
    _check(ModelConfig(vocab_size=7, hidden=H, layers=L), T, B, dtype, tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("activation", ["tanh", "softsign"])
@pytest.mark.parametrize("L,B", [(1, 1), (2, 3)])
def test_every_cell_and_activation_matches_reference(dtype, tol, cell, activation, L, B):
    _check(ModelConfig(vocab_size=6, hidden=5, layers=L, cell=cell, activation=activation), 6, B, dtype, tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-9), (np.float32, 1e-4)])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_embedding_and_dropout_match_reference(dtype, tol, cell):
    cfg = ModelConfig(vocab_size=6, hidden=5, layers=2, cell=cell, embed=4, dropout=0.25)
    _check(cfg, 5, 3, dtype, tol, seed=3)


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "softsign"])
@pytest.mark.parametrize("B,H", [(5, 3), (20, 21)])
def test_lstm_recurrence_plain_and_transposed_both_match_reference(monkeypatch, transposed, activation, B, H):
    """Wide layers at narrow batches run the recurrent products transposed; here both ways are
    forced on small shapes (21 and 84 are not multiples of the 16-wide transpose tiles)."""
    import charrnn.backends.cpu as cpu
    monkeypatch.setattr(cpu, "TRANSPOSED_MIN_H", 1 if transposed else 1 << 30)
    monkeypatch.setattr(cpu, "TRANSPOSED_MAX_B", 1 << 30)
    cfg = ModelConfig(vocab_size=7, hidden=H, layers=2, activation=activation)
    assert CpuBackend(cfg, init_params(cfg, np.random.default_rng(0)))._transposed(B) == transposed
    for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
        _check(cfg, 6, B, dtype, tol)


def test_training_step_is_deterministic():
    cfg = ModelConfig(vocab_size=9, hidden=16, layers=2)
    p, x, y, state = _case(cfg, 10, 4, np.float32)
    a = CpuBackend(cfg, p.astype(np.float32)); b = CpuBackend(cfg, p.astype(np.float32))
    la, _ = a.train_step(x, y, state.astype(np.float32))
    lb, _ = b.train_step(x, y, state.astype(np.float32))
    assert la == lb and np.array_equal(a.grad.flat, b.grad.flat)
