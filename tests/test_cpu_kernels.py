"""The CPU backend's own kernels: the vectorised float32 exp/expm1, the activations over the whole
float range, and the small-product path."""
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from numba import njit

from charrnn.backends import cpu_kernels as K


@njit(error_model="numpy")
def _expm1(v):
    q = np.empty_like(v)
    ib = np.empty(v.size, np.int32)
    K.vexpm1(v, q, ib)


@njit(error_model="numpy")
def _exp(v):
    q = np.empty_like(v)
    ib = np.empty(v.size, np.int32)
    K.vexp(v, q, ib)


@njit(error_model="numpy")
def _mm(a, b, c, beta):
    K.mm(a, b, c, beta)


@njit(error_model="numpy")
def _cells(a, c_prev, kind):
    """cpu_kernels._lstm_cells on a (B, 4H) block of pre-activations, zero bias."""
    B, G = a.shape
    H = G // 4
    c, tc, h = np.empty((B, H), a.dtype), np.empty((B, H), a.dtype), np.empty((B, H), a.dtype)
    v, w = np.empty((B, G), a.dtype), np.empty((B, H), a.dtype)
    q, ib = np.empty(B * G, a.dtype), np.empty(B * G, np.int32)
    K._lstm_cells(a, np.zeros(G, a.dtype), c_prev, kind, c, tc, h, v, w, q, ib)
    return c, tc, h


@njit(error_model="numpy")
def _gru_rnn_acts(x, kind):
    """cpu_kernels' GRU and RNN cells on one step whose pre-activations are x, with zero
    recurrent product, biases and state: the GRU's r and z are sigmoid(x) and n is act(x), the
    RNN's h is act(x)."""
    N = x.size
    f = x.dtype
    a = np.empty((1, 3 * N), f)
    for k in range(N):
        a[0, k] = a[0, N + k] = a[0, 2 * N + k] = x[k]
    hn, h = np.empty((1, N), f), np.empty((1, N), f)
    v, q, ib = np.empty(3 * N, f), np.empty(3 * N, f), np.empty(3 * N, np.int32)
    K._gru_cells(a, np.zeros((1, 3 * N), f), np.zeros(3 * N, f), np.zeros(N, f), np.zeros((1, N), f), kind,
                 hn, h, v, q, ib)
    r = x.reshape(1, N).copy()
    K._rnn_cells(r, np.zeros(N, f), kind, h, np.empty((1, N), f), q, ib)
    return a[0, :N], a[0, N:2 * N], a[0, 2 * N:], h[0]


# Clamp edges of the exp reduction, where tanh's and sigmoid's old forms broke (44, 88.7, 354),
# and the extremes.
EDGES = [0.0, 1e-45, 1e-38, 1.1754944e-38, 0.5, 9.0, 10.0, 20.0, 44.0, 44.5, 87.33654, 88.0,
         88.02969, 88.72283, 89.0, 103.97, 104.0, 120.0, 354.0, 355.0, 1e4, 1e38, 3.4e38, np.inf]


def _float32_sweep() -> np.ndarray:
    """Every 4099th float32 bit pattern from +0 to +inf (subnormals included), the edges, and
    the negatives of all of them."""
    x = np.concatenate([np.arange(0, 0x7F800000, 4099, dtype=np.uint32).view(np.float32),
                        np.array(EDGES, np.float32)])
    return np.concatenate([x, -x])


def _float64_sweep() -> np.ndarray:
    r = np.random.default_rng(0)
    x = np.concatenate([r.integers(0, 0x7FF0000000000000, 400_000, dtype=np.uint64).view(np.float64),
                        _float32_sweep()[::7].astype(np.float64), np.array(EDGES + [710.0, 1e300])])
    return np.concatenate([x, -x])


def _ulps(got: np.ndarray, want: np.ndarray) -> float:
    """Largest |got - want| in units of the last place of want rounded to got's type (the
    subnormal spacing below the normal range)."""
    w = want.astype(got.dtype)
    spacing = np.spacing(np.abs(w)).astype(np.longdouble)
    return float(np.max(np.abs(got.astype(np.longdouble) - want) / spacing))


def _exact(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sigmoid, tanh and softsign in extended precision (x87 long double where NumPy has it)."""
    xl = x.astype(np.longdouble)
    e = np.exp(-np.abs(xl))
    sig = np.where(xl >= 0, 1 / (1 + e), e / (1 + e))
    m = np.minimum(np.abs(xl), np.longdouble(2.0) ** 80)
    soft = np.sign(xl) * m / (1 + m)
    return sig, np.tanh(xl), soft


# Stated bounds: max error in ulps over the whole range, +-inf and subnormals included. Measured
# on these sweeps: float32 sigmoid 1.97, tanh 2.41 (libm's 2.05), softsign 0.50; float64
# sigmoid 1.83, tanh 2.42, softsign 1.47; float32 exp 1.14, expm1 1.97.
ULPS = {np.float32: {"sigmoid": 2.5, "tanh": 3.0, "softsign": 1.0},
        np.float64: {"sigmoid": 2.5, "tanh": 3.0, "softsign": 2.0}}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_activations_are_within_a_few_ulps_over_the_whole_float_range(dtype):
    x = (_float32_sweep() if dtype == np.float32 else _float64_sweep()).astype(dtype)
    sig, th, soft = _exact(x)
    H = x.size
    a = np.concatenate([x, x, x, x])[None, :].copy()
    _cells(a, np.zeros((1, H), dtype), K.TANH)
    bound = ULPS[dtype]
    assert _ulps(a[0, :H], sig) <= bound["sigmoid"] and _ulps(a[0, H:2 * H], sig) <= bound["sigmoid"]
    assert _ulps(a[0, 3 * H:], sig) <= bound["sigmoid"]
    assert _ulps(a[0, 2 * H:3 * H], th) <= bound["tanh"]
    # the cell's own tanh: i = 0 and f = 1 exactly (pre-activations -inf, +inf) make c = c_prev
    gate = np.zeros((1, 4 * H), dtype)
    gate[0, :H], gate[0, H:2 * H], gate[0, 3 * H:] = -np.inf, np.inf, np.inf
    for kind, want, name in ((K.TANH, th, "tanh"), (K.SOFTSIGN, soft, "softsign")):
        c, tc, h = _cells(gate.copy(), x[None, :].copy(), kind)
        assert np.array_equal(c[0], x)
        assert _ulps(tc[0], want) <= bound[name], name
        assert np.array_equal(h, tc)            # o = 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gru_and_rnn_activations_are_within_a_few_ulps_over_the_whole_float_range(dtype):
    """The GRU's and RNN's window kernels share the LSTM's exp-based activations: a scalar
    sigmoid(x < -88.7) was NaN in float32 once."""
    x = (_float32_sweep() if dtype == np.float32 else _float64_sweep()).astype(dtype)
    sig, th, soft = _exact(x)
    for kind, want, name in ((K.TANH, th, "tanh"), (K.SOFTSIGN, soft, "softsign")):
        r, z, n, h = _gru_rnn_acts(x, kind)
        assert _ulps(r, sig) <= ULPS[dtype]["sigmoid"] and _ulps(z, sig) <= ULPS[dtype]["sigmoid"]
        assert _ulps(n, want) <= ULPS[dtype][name], name
        assert _ulps(h, want) <= ULPS[dtype][name], name


def test_float32_exp_and_expm1_are_within_a_few_ulps_over_the_whole_float_range():
    x = _float32_sweep()
    xl = x.astype(np.longdouble)
    with np.errstate(over="ignore"):
        want_exp, want_expm1 = np.exp(xl), np.expm1(xl)
    w = x.copy()
    _exp(w)
    with np.errstate(over="ignore"):
        finite = np.isfinite(want_exp.astype(np.float32))
    assert _ulps(w[finite], want_exp[finite]) <= 2.0
    assert np.all(w[~finite] == np.inf)          # overflow is inf, as in libm
    v = x.copy()
    _expm1(v)
    with np.errstate(over="ignore"):
        finite = np.isfinite(want_expm1.astype(np.float32))
    assert _ulps(v[finite], want_expm1[finite]) <= 2.0
    assert np.all(v[~finite] == np.inf)


def test_small_products_match_blas_with_and_without_accumulation():
    r = np.random.default_rng(0)
    for M in (1, K.SMALL_M, K.SMALL_M + 1):
        a, b = r.normal(size=(M, 7)), r.normal(size=(7, 9))
        c0 = r.normal(size=(M, 9))
        for beta in (0.0, 1.0):
            c = c0.copy()
            _mm(a, b, c, beta)
            np.testing.assert_allclose(c, a @ b + beta * c0, rtol=1e-12, atol=1e-12)


def test_exact_products_match_blas_and_give_each_row_bit_identically_whatever_the_other_rows():
    r = np.random.default_rng(1)
    a, b = r.normal(size=(13, 37)), r.normal(size=(37, 21))
    for beta in (0.0, 1.0):
        c0 = r.normal(size=(13, 21))
        whole = c0.copy()
        K.mm_exact(a, b, whole, beta)
        np.testing.assert_allclose(whole, a @ b + beta * c0, rtol=1e-12, atol=1e-12)
        for lo, hi in ((0, 1), (6, 7), (2, 9), (12, 13)):
            part = c0[lo:hi].copy()
            K.mm_exact(a[lo:hi], b, part, beta)
            assert np.array_equal(part, whole[lo:hi])


@njit(fastmath={"contract"}, error_model="numpy")
def _mm_exact_row_by_row(a, b, c):
    """The exact product's order written plainly, one row at a time: c += a @ b with each element
    c + (((x0 b0 + x1 b1) + x2 b2) + x3 b3) per four k, the last k % 4 one by one."""
    M, N = c.shape
    Kd = a.shape[1]
    K4 = Kd - Kd % 4
    for m in range(M):
        for k in range(0, K4, 4):
            for n in range(N):
                c[m, n] += a[m, k] * b[k, n] + a[m, k + 1] * b[k + 1, n] + a[m, k + 2] * b[k + 2, n] \
                    + a[m, k + 3] * b[k + 3, n]
        for k in range(K4, Kd):
            for n in range(N):
                c[m, n] += a[m, k] * b[k, n]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batched_exact_products_of_1_to_37_rows_match_the_row_loop_bit_for_bit_at_awkward_sizes(dtype):
    """mm_exact_batch (charrnn serve's steps) takes a different loop (column blocks, two rows per
    load of b) from mm_exact (sampling) and the plain loop; every row must still come out with
    their bits, so a row's text does not depend on the batch nor on which command wrote it:
    column counts not multiples of the block or of the vector, a k not a multiple of four, rows
    1..37, with and without accumulation."""
    r = np.random.default_rng(2)
    W = K.EXACT_COLS
    for Kd, N in ((37, W + 3), (6, 2 * W - 1), (40, 160), (3, 5)):
        b = r.normal(size=(Kd, N)).astype(dtype)
        a = r.normal(size=(37, Kd)).astype(dtype)
        c0 = r.normal(size=(37, N)).astype(dtype)
        want = c0.copy()
        _mm_exact_row_by_row(a, b, want)
        for M in range(1, 38):
            for f in (K.mm_exact_batch, K.mm_exact):
                got = c0[:M].copy()
                f(a[:M], b, got, 1.0)
                assert np.array_equal(got, want[:M]), (f, Kd, N, M)
            zero = np.full((M, N), np.nan, dtype)
            K.mm_exact_batch(a[:M], b, zero, 0.0)
            plain = np.zeros((M, N), dtype)
            _mm_exact_row_by_row(a[:M], b, plain)
            assert np.array_equal(zero, plain), (Kd, N, M)


@pytest.mark.skipif(not K.HAVE_BLAS or platform.machine() != "x86_64", reason="NumPy's OpenBLAS on x86-64")
def test_blas_core_names_the_kernels_that_openblas_coretype_pins():
    code = "from charrnn.backends.cpu_kernels import blas_core; print(blas_core())"
    for core in ("Haswell", "Sandybridge"):
        env = dict(os.environ, OPENBLAS_CORETYPE=core)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == core


_ASIDE = """
import numpy as np
from charrnn.backends import cpu_kernels as K
f32 = np.dtype(np.float32)
assert K._c_cached("cells", f32) is False and K._c_cached("draw", f32) is False
first = "K.add_bias(np.zeros((1, 1), dt), np.zeros(1, dt))"
assert K.compile_cells_aside(f32, draw=True, first=first) is True
assert K.compile_cells_aside(f32) is False          # one process per dtype
child, names = K._COMPILING[f32]
assert names == {"cells", "draw"}
at = K.lstm_cells_at(f32)
assert at and child.returncode == 0 and not K._COMPILING
assert K._c_cached("cells", f32) is True and K._c_cached("draw", f32) is True
assert K.compile_cells_aside(f32, draw=True) is False   # loaded: nothing to do
K.add_bias(np.zeros((1, 1), f32), np.zeros(1, f32))
assert sum(K.add_bias.stats.cache_hits.values()) == 1 and not K.add_bias.stats.cache_misses   # `first` ran there
print("ok")
"""


def test_cold_c_functions_and_the_first_kernels_compile_in_a_second_process_into_the_cache(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", _ASIDE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_draw_called_by_address_draws_what_draw_rows_draws_bit_for_bit(dtype):
    """lstm_generate calls the draw as a C function (compiled aside on a cold cache): the same
    code without fast-math, so the same codes and log-probabilities to the bit."""
    import ctypes
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    draw = ctypes.CFUNCTYPE(None, vp, vp, ctypes.c_double, i64, vp, vp, i64, i64)(K.c_function_at("draw", dtype))
    r = np.random.default_rng(5)
    B, V = 3, 65
    for temp, top_k in ((1.0, 0), (0.7, 5), (0.0, 0), (1.3, V)):
        logits = (r.normal(size=(B, V)) * 4).astype(dtype)
        u = r.random(B)
        want_c, want_lp = np.empty(B, np.int64), np.empty(B)
        K.draw_rows(logits, u, temp, top_k, want_c, want_lp)
        got_c, got_lp = np.empty(B, np.int64), np.empty(B)
        draw(logits.ctypes.data, u.ctypes.data, temp, top_k, got_c.ctypes.data, got_lp.ctypes.data, B, V)
        assert np.array_equal(got_c, want_c) and np.array_equal(got_lp, want_lp), (temp, top_k)


def test_the_stand_in_cell_writes_zeros_where_the_cell_writes_and_nothing_else():
    """A warm-up's tiny model runs through it while the cell compiles aside: its outputs must
    be finite (zeros) for the backward that follows, and it must not touch the inputs."""
    r = np.random.default_rng(6)
    T, B, H = 3, 2, 5
    gates = r.normal(size=(T, B, 4 * H))
    bias, Wh = r.normal(size=4 * H), r.normal(size=(H, 4 * H))
    hs, cs, tcs = r.normal(size=(T + 1, B, H)), r.normal(size=(T + 1, B, H)), r.normal(size=(T, B, H))
    h0, c0 = hs[0].copy(), cs[0].copy()
    K.lstm_forward(gates, bias, Wh, hs, cs, tcs, 0, K._stand_in_at(np.dtype(np.float64)))
    assert not gates.any() and not hs[1:].any() and not cs[1:].any() and not tcs.any()
    assert np.array_equal(hs[0], h0) and np.array_equal(cs[0], c0)
