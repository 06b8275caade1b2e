"""reference.py against central finite differences, in float64, for every cell and knob
(layer normalisation included)."""
import numpy as np
import pytest

from charrnn import reference as ref
from charrnn.dropout import masks as dropout_masks, recurrent_seed, zoneout_masks
from charrnn.model import Params, init_params, param_shapes, zero_state
from tiny_models import tiny_config


def _setup(cfg, T, B, seed=0):
    r = np.random.default_rng(seed)
    p = init_params(cfg, r, dtype=np.float64)
    p.flat[:] = r.normal(0, 0.4, p.flat.size)          # well away from zero, all biases too
    x = r.integers(0, cfg.vocab_size, (T, B))
    y = r.integers(0, cfg.vocab_size, (T, B))
    state = r.normal(0, 0.5, zero_state(cfg, B, np.float64).shape)
    masks = None
    if cfg.dropout:
        masks = dropout_masks(seed + 7, (cfg.layers, T, B, cfg.hidden), cfg.dropout, np.float64)
    rmasks = None
    if cfg.recurrent_dropout:
        rmasks = dropout_masks(recurrent_seed(seed + 7), (cfg.layers, T, B, cfg.hidden), cfg.recurrent_dropout,
                               np.float64)
    zmasks = None
    if cfg.zoned:
        zmasks = zoneout_masks(seed + 7, (cfg.layers, T, B, cfg.hidden), (cfg.zoneout_cell, cfg.zoneout_hidden),
                               np.float64)
    return p, x, y, state, (masks, rmasks, zmasks)


def _rel_err(a, b):
    """Elementwise relative error; entries far below the tensor's scale are judged against that
    scale, since central differences carry ~1e-10 absolute noise."""
    floor = 1e-3 * max(np.abs(a).max(), np.abs(b).max(), 1e-12)
    return np.max(np.abs(a - b) / np.maximum(floor, np.abs(a) + np.abs(b)))


CASES = [
    dict(cell=c, activation=a, layers=L, embed=e, dropout=d)
    for c in ("lstm", "gru", "rnn")
    for a in ("tanh", "softsign")
    for L, e, d in ((1, 0, 0.0), (2, 0, 0.0), (2, 3, 0.3))
] + [
    dict(cell="lstm", activation=a, layers=L, embed=e, dropout=d, norm="layer")
    for a in ("tanh", "softsign")
    for L, e, d in ((1, 0, 0.0), (2, 3, 0.3))
] + [
    dict(cell="lstm", activation=a, layers=2, embed=0, dropout=d, norm="layer", recurrent_dropout=0.4)
    for a, d in (("tanh", 0.0), ("softsign", 0.3))
]


@pytest.mark.parametrize("kw", CASES, ids=lambda k: "-".join(str(v) for v in k.values()))
def test_gradients_match_central_differences(kw):
    cfg = tiny_config(vocab_size=5, hidden=4, **kw)
    T, B = 3, 2
    p, x, y, state, masks = _setup(cfg, T, B)
    _gradient_check(cfg, p, x, y, state, masks)


@pytest.mark.parametrize("masked", [True, False], ids=["training-masks", "expectation"])
@pytest.mark.parametrize("zc,zh", [(0.5, 0.0), (0.0, 0.5), (0.5, 0.3)])
def test_zoneout_gradients_match_central_differences(masked, zc, zh):
    """Zoneout with drawn keep masks (training; both paths occur) and, without masks, with
    the rates themselves (scoring and dynamic evaluation)."""
    cfg = tiny_config(vocab_size=5, hidden=4, layers=2, norm="layer", dropout=0.3, zoneout_cell=zc,
                      zoneout_hidden=zh)
    p, x, y, state, masks = _setup(cfg, 3, 2, seed=1)
    if masked:
        assert 0 < masks[2][:, 0 if zc else 1].mean() < 1
    # eps 1e-4: at 1e-5 the differences' rounding noise reaches 1e-5 relative on the smallest
    # gradients here (the error grows as eps shrinks: 9e-7, 1.6e-5, 2.7e-4 at 1e-4, 1e-5, 1e-6)
    _gradient_check(cfg, p, x, y, state, masks if masked else (masks[0], None, None), eps=1e-4)


def _gradient_check(cfg, p, x, y, state, masks, eps=1e-5):
    T, B = x.shape
    scale = 1.0 / (T * B)
    loss, cache, _ = ref.forward(p, cfg, x, y, state, *masks)
    g = p.like()
    dstate = ref.backward(p, g, cfg, cache, scale)

    def f(flat=None, st=None):
        q = p if flat is None else Params(cfg, flat)
        return ref.forward(q, cfg, x, y, state if st is None else st, *masks)[0] * scale

    num = np.empty_like(p.flat)
    for k in range(p.flat.size):
        a, b = p.flat.copy(), p.flat.copy()
        a[k] += eps; b[k] -= eps
        num[k] = (f(a) - f(b)) / (2 * eps)
    for name, _ in param_shapes(cfg):
        assert _rel_err(g[name], Params(cfg, num)[name]) < 1e-5, name
    num_s = np.empty_like(state)
    for k in np.ndindex(state.shape):
        a, b = state.copy(), state.copy()
        a[k] += eps; b[k] -= eps
        num_s[k] = (f(st=a) - f(st=b)) / (2 * eps)
    assert _rel_err(dstate, num_s) < 1e-5


def test_state_carried_across_windows_equals_one_long_window():
    cfg = tiny_config(vocab_size=6, hidden=5, layers=2)
    p, x, y, state, _ = _setup(cfg, 8, 3)
    whole, _, s_whole = ref.forward(p, cfg, x, y, state)
    a, _, s_mid = ref.forward(p, cfg, x[:5], y[:5], state)
    b, _, s_end = ref.forward(p, cfg, x[5:], y[5:], s_mid)
    assert np.isclose(whole, a + b, rtol=1e-12)
    np.testing.assert_allclose(s_whole, s_end, rtol=1e-12)


def test_lstm_forget_bias_and_uniform_init():
    cfg = tiny_config(vocab_size=7, hidden=3, forget_bias=2.5)
    p = init_params(cfg, np.random.default_rng(0))
    assert np.all(p["l0.b"][3:6] == 2.5) and np.all(p["l0.b"][:3] == 0)
    assert np.abs(p["l1.Wh"]).max() <= 0.08
