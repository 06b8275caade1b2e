"""charrnn/backends/cuda_cells.py: each cell's device step, forward and backward, against one step
of reference.py's cell in float64 on the same float32 numbers (the device works in float32), for
both activations, over pre-activations from small to saturated. Run as Python by the CUDA simulator (the kernels that
call these functions are held to reference.py through the backend in tests/test_cuda_backend.py);
in a plain run, the last test starts this file under NUMBA_ENABLE_CUDASIM=1."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn import reference as ref

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
needs_sim = pytest.mark.skipif(not SIM, reason="runs under NUMBA_ENABLE_CUDASIM=1, started by the last test")
KINDS = [("tanh", 0), ("softsign", 1)]
N = 40        # units, each one independent point: B = 1, Wh = 0 so the pre-activations are xw's


def _points(k, seed):
    r = np.random.default_rng(seed)
    return (r.standard_normal((k, N)) * np.logspace(-2, 1.5, N)).astype(np.float32).astype(float)   # up to ~30


def _close(got, want):
    """float32 results against float64 ones: a few float32 ulps of the largest value."""
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(1.0, float(np.max(np.abs(want)))))


def _each(fn, *columns):
    """fn on every unit j's scalars; the results as arrays (one per returned value)."""
    out = [fn(*(np.float32(c[j]) for c in columns)) for j in range(N)]
    return [np.array(v, float) for v in zip(*out)]


@needs_sim
@pytest.mark.parametrize("kind,code", KINDS)
def test_lstm_cell_is_one_step_of_the_reference(kind, code):
    from charrnn.backends.cuda_cells import lstm_cell, lstm_cell_grad
    a, c0, dh, dc = _points(4, 1), _points(1, 2)[0], _points(1, 3)[0], _points(1, 4)[0]
    hs, cache = ref.lstm_forward(a.reshape(1, 1, 4 * N), np.zeros((N, 4 * N)), np.zeros((1, N)), c0[None], kind)
    i, f, g, o, c, tc = _each(lambda *v: lstm_cell(*v, code), *a, c0)
    gates, cs, tcs = cache
    _close(np.concatenate([i, f, g, o]), gates[0, 0])
    _close(c, cs[1, 0])
    _close(o * tc, hs[1, 0])
    da, _, _, dc0 = ref.lstm_backward(dh.reshape(1, 1, N), np.zeros((N, 4 * N)), hs, cache, np.zeros((1, N)),
                                      dc[None], kind)
    got = _each(lambda *v: lstm_cell_grad(*v, code), dh, dc, i, f, g, o, c0, tc)
    _close(np.concatenate(got[:4]), da[0, 0])
    _close(got[4], dc0[0])


@needs_sim
@pytest.mark.parametrize("kind,code", KINDS)
def test_gru_cell_is_one_step_of_the_reference(kind, code):
    from charrnn.backends.cuda_cells import gru_cell, gru_cell_grad
    a, h0, bh, dh = _points(3, 5), _points(1, 6)[0], _points(1, 7)[0], _points(1, 8)[0]
    hs, cache = ref.gru_forward(a.reshape(1, 1, 3 * N), np.zeros((N, 3 * N)), bh, h0[None], kind)
    r, z, n, h = _each(lambda *v: gru_cell(*v, code), a[0], a[1], a[2], bh, h0)   # q = 0 @ Wh + bh
    gates, hn = cache
    _close(np.concatenate([r, z, n]), gates[0, 0])
    _close(h, hs[1, 0])
    dxw, dhw, dh0 = ref.gru_backward(dh.reshape(1, 1, N), np.zeros((N, 3 * N)), hs, cache, np.zeros((1, N)), kind)
    dar, daz, dan, dhz = _each(lambda *v: gru_cell_grad(*v, code), dh, r, z, n, hn[0, 0], h0)
    _close(np.concatenate([dar, daz, dan]), dxw[0, 0])
    _close(dan * r, dhw[0, 0, 2 * N:])
    _close(dhz, dh0[0])


@needs_sim
@pytest.mark.parametrize("kind,code", KINDS)
def test_rnn_cell_is_one_step_of_the_reference(kind, code):
    from charrnn.backends.cuda_cells import rnn_cell, rnn_cell_grad
    a, dh = _points(1, 9)[0], _points(1, 10)[0]
    hs, _ = ref.rnn_forward(a.reshape(1, 1, N), np.zeros((N, N)), np.zeros((1, N)), kind)
    (h,) = _each(lambda v: (rnn_cell(v, code),), a)
    _close(h, hs[1, 0])
    da, _, _ = ref.rnn_backward(dh.reshape(1, 1, N), np.zeros((N, N)), hs, np.zeros((1, N)), kind)
    (got,) = _each(lambda *v: (rnn_cell_grad(*v, code),), dh, h)
    _close(got, da[0, 0])


@pytest.mark.skipif(SIM, reason="this is the launcher of the simulator run")
def test_cuda_cells_under_the_simulator():
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                       capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "6 passed" in r.stdout
