"""Numba kernels of the CPU backend: BLAS from inside @njit, vectorised gate math, fused loops.

- `gemm` calls NumPy's own OpenBLAS (the library NumPy ships, found next to it) from nopython
  code, so a window's time loop, products included, runs in one compiled call with no Python
  between steps: `lstm_forward`/`lstm_backward`, `gru_*`, `rnn_*` (cpu_layers.py calls them on
  a chunk of steps). Without that library a plain loop stands in (slow, same results).
- `vexp`/`vexpm1` are exp and exp-1 written as plain float arithmetic (range reduction by
  ln 2, a degree-7 Taylor polynomial, 2^n assembled in an int32 buffer viewed as float32), so
  LLVM vectorises them; there is no SVML here. Float32 only, exact to a few ulps over the whole
  range, subnormal results and overflow to inf included (tests/test_cpu_kernels.py sweeps it);
  float64 (the tests' dtype) uses math.exp/math.expm1, exact to rounding.
- The activations (one set of helpers for every cell) only ever take exp of a non-positive
  argument, so nothing overflows and no reciprocal of a huge number (which fast-math flushes
  to zero) is formed: sigmoid(a) = (1 or e) / (1 + e) with e = exp(-|a|), tanh(a) = sign(a) *
  -t / (t + 2) with t = expm1(-2|a|), softsign(a) = sign(a) * m / (1 + m) with m = min(|a|,
  2^30). Denominators lie in [1, 2]. Errors over the whole float32 range are stated and tested in
  tests/test_cpu_kernels.py.
- Compiling on an empty cache is what a new user waits for (bench/RESULTS.md, "Cold start"),
  so code is compiled once and called rather than inlined where it is large: the LSTM cell is
  one C function per float type whose address the kernels take (`lstm_cells_at`), and `mm` is
  called; the kernels for the two product orientations (`lstm_forward`/`lstm_forward_t`,
  `lstm_backward`/`lstm_backward_t`) are apart, so a run compiles only the one it takes; and
  `lstm_generate` inlines the step, calls the draw by address as it calls the cell
  (`c_function_at`), and takes only the exact products (`lstm_generate_many`, more than
  SMALL_M rows, takes BLAS's). On a cold cache the C functions compile in a second process
  while this one compiles the kernels (`compile_cells_aside`, `call_with_cells`): the largest
  pieces on two cores.
Every kernel is serial (the calling thread), and those the lanes call (cpu_window.py) release
the GIL. The cores belong either to BLAS, whose thread count `set_blas_threads` sets, or to the
lanes, each calling BLAS on one thread. Serial loops keep every float reduction in a fixed order.
"""
from __future__ import annotations

import ctypes
import glob
import math
import os
import threading

import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from charrnn import dropout
from charrnn.backends import cpu_tiles as tiles

TANH, SOFTSIGN = 0, 1
# Fast-math without nnan/ninf (inputs may be +-inf, the tests sweep them) and without arcp
# (a reciprocal of a huge number is subnormal, and the fast one flushes it to zero).
_FM = {"nsz", "contract", "reassoc"}

# ---------------------------------------------------------------- NumPy's OpenBLAS, from nopython code
_BLAS = None


def _find_openblas():
    """NumPy wheels ship scipy-openblas (ILP64) in numpy.libs; returns (dll, symbol prefix/suffix)."""
    base = os.path.dirname(os.path.dirname(np.__file__))
    for pattern, pre, suf in (("numpy.libs/libscipy_openblas64_*.so*", "scipy_", "64_"),
                              ("numpy.libs/libscipy_openblas*.so*", "scipy_", ""),
                              ("numpy/.dylibs/libscipy_openblas64_*.dylib", "scipy_", "64_")):
        for path in sorted(glob.glob(os.path.join(base, pattern))):
            try:
                dll = ctypes.CDLL(path)
                getattr(dll, f"{pre}cblas_sgemm{suf}")
                return dll, pre, suf
            except (OSError, AttributeError):
                continue
    return None


_found = _find_openblas()
HAVE_BLAS = _found is not None and _found[2] == "64_"   # the signatures below take 64-bit ints
if HAVE_BLAS:
    import llvmlite.binding as _ll
    _BLAS, _pre, _suf = _found
    for _mine, _theirs in (("charrnn_sgemm", "cblas_sgemm"), ("charrnn_dgemm", "cblas_dgemm")):
        _ll.add_symbol(_mine, ctypes.cast(getattr(_BLAS, f"{_pre}{_theirs}{_suf}"), ctypes.c_void_p).value)

_i32, _i64, _vp = types.int32, types.int64, types.voidptr
_sgemm = types.ExternalFunction("charrnn_sgemm", types.void(
    _i32, _i32, _i32, _i64, _i64, _i64, types.float32, _vp, _i64, _vp, _i64, types.float32, _vp, _i64))
_dgemm = types.ExternalFunction("charrnn_dgemm", types.void(
    _i32, _i32, _i32, _i64, _i64, _i64, types.float64, _vp, _i64, _vp, _i64, types.float64, _vp, _i64))


def set_blas_threads(n: int) -> bool:
    """Set OpenBLAS's thread count at run time; False when NumPy's OpenBLAS was not found."""
    fn = getattr(_BLAS, f"{_pre}openblas_set_num_threads{_suf}", None) if _BLAS is not None else None
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int64 if _suf == "64_" else ctypes.c_int]
    fn(int(n))
    return True


def blas_threads() -> int:
    """OpenBLAS's current thread count (1 when it was not found)."""
    fn = getattr(_BLAS, f"{_pre}openblas_get_num_threads{_suf}", None) if _BLAS is not None else None
    if fn is None:
        return 1
    fn.restype = ctypes.c_int
    return int(fn())


def blas_core() -> str | None:
    """The kernel family OpenBLAS chose ("SkylakeX", "Haswell", ...): it picks by CPUID unless
    OPENBLAS_CORETYPE forces one, and AVX-512 kernels run large products ~1.9x faster than
    Haswell's AVX2 ones on an AVX-512 machine."""
    fn = getattr(_BLAS, f"{_pre}openblas_get_corename{_suf}", None) if _BLAS is not None else None
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def blas_config() -> str | None:
    """OpenBLAS's build line ("OpenBLAS 0.3.31 USE64BITINT DYNAMIC_ARCH ... SkylakeX ..."):
    its version, with the kernel family, decides the order of its sums (charrnn/machine.py)."""
    fn = getattr(_BLAS, f"{_pre}openblas_get_config{_suf}", None) if _BLAS is not None else None
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


class blas_threads_at_most:
    """Context manager: at most n BLAS threads inside (restored on exit)."""

    def __init__(self, n: int):
        self.n, self.old = n, None

    def __enter__(self):
        self.old = blas_threads()
        if self.old > self.n:
            set_blas_threads(self.n)
        return self

    def __exit__(self, *exc):
        if self.old > self.n:
            set_blas_threads(self.old)
        return False


def gemm(a, b, c, ta, tb, beta):
    """c = op(a) @ op(b) + beta * c, op = transpose when ta/tb; 2-D arrays with unit column stride."""


@overload(gemm)
def _gemm_impl(a, b, c, ta, tb, beta):
    if HAVE_BLAS:
        f = _sgemm if a.dtype == types.float32 else _dgemm

        def blas(a, b, c, ta, tb, beta):
            M, N = c.shape
            K = a.shape[0] if ta else a.shape[1]
            if M == 0 or N == 0:
                return
            sz = a.itemsize
            f(np.int32(101), np.int32(112 if ta else 111), np.int32(112 if tb else 111), M, N, K,
              a.dtype.type(1.0), a.ctypes.data, max(a.strides[0] // sz, 1), b.ctypes.data,
              max(b.strides[0] // sz, 1), c.dtype.type(beta), c.ctypes.data, max(c.strides[0] // sz, 1))
        return blas

    def loops(a, b, c, ta, tb, beta):
        A = a.T if ta else a
        Bm = b.T if tb else b
        for m in range(c.shape[0]):
            for n in range(c.shape[1]):
                s = c.dtype.type(0.0)
                for k in range(A.shape[1]):
                    s += A[m, k] * Bm[k, n]
                c[m, n] = s + (c[m, n] * beta if beta != 0 else 0)
    return loops


SMALL_M = 4   # products with at most this many rows run on the calling thread


def mm(a, b, c, beta):
    """c = a @ b + beta * c. A few rows (sampling, one-stream evaluation) are a memory-bound
    pass over b, done here on one thread: waking BLAS threads for it costs more than it saves
    and, on a busy machine, waits for a descheduled thread. Larger products go to BLAS.
    `mm` is called (lstm_step, with several products, compiles it once); `_mm` is inlined, for
    the time loops with one product per step, where a call costs at small sizes."""
    M, N = c.shape
    if M > SMALL_M:
        gemm(a, b, c, False, False, beta)
        return
    f = c.dtype.type
    Kd = a.shape[1]
    K4 = Kd - Kd % 4
    for m in range(M):
        if beta == 0:
            for n in range(N):
                c[m, n] = f(0.0)
        for k in range(0, K4, 4):          # four rows of b per pass over c: fewer loads and stores of c
            x0, x1, x2, x3 = a[m, k], a[m, k + 1], a[m, k + 2], a[m, k + 3]
            for n in range(N):
                c[m, n] += x0 * b[k, n] + x1 * b[k + 1, n] + x2 * b[k + 2, n] + x3 * b[k + 3, n]
        for k in range(K4, Kd):
            x = a[m, k]
            for n in range(N):
                c[m, n] += x * b[k, n]


_mm = njit(inline="always", fastmath=_FM, error_model="numpy")(mm)
mm = njit(nogil=True, fastmath=_FM, error_model="numpy")(mm)


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def mm_exact(a, b, c, beta):
    """c = a @ b + beta * c with every element's sum in a fixed order, so a row's result is
    bit-identical whatever the other rows and their number: `charrnn serve` steps unrelated
    requests together, and a seeded one must not depend on its neighbours. BLAS does not
    promise that (it blocks and accumulates differently for a different number of rows), nor
    does a fast-math loop (reassociation lets the compiler sum differently in differently shaped
    code), so this one is compiled without fast-math's reassociation and not inlined into a
    fast-math kernel: each element is c + (((x0 b0 + x1 b1) + x2 b2) + x3 b3) per four k, in
    that order. It allows contraction only: a multiply and the add after it may become one
    fused multiply-add. That reorders no sum, and every row runs the same code over n whatever
    the number of rows, so a row's bits still do not depend on the batch; at batch 1 it is the
    difference between 0.81x and 1.02x the sampling speed of the fast-math loop that batch-1
    sampling used before (bench/ab_speed.py, config b, 2026-12-06).
    Sampling's few rows take this; a batch takes `mm_exact_batch`, whose rows come out with the
    same bits."""
    if beta == 0:
        _zero(c)
    _mm_exact_rows(a, b, c)


EXACT_COLS = 256   # columns per block of mm_exact_batch: the block of c stays in L1/L2


@njit(cache=True, nogil=True, fastmath={"contract"}, error_model="numpy")
def mm_exact_batch(a, b, c, beta):
    """mm_exact for a batch (`charrnn serve`'s steps): the same expression per element, written
    out once per loop below in exactly mm_exact's form, so it contracts the same way and every
    row comes out bit-identical to mm_exact's (tests/test_cpu_kernels.py compares every row count
    1..37 at awkward sizes). With AVX-512, cpu_tiles.TILE_MIN_ROWS rows or more take cpu_tiles'
    register tiles (the same operations as LLVM IR, ~2x the loops' speed at 16 rows) for the
    columns their panels cover; three rows or more take `_mm_exact_blocked` (for the columns
    after those), where each load of b serves two rows and c is walked in column blocks that
    stay in cache; one or two take mm_exact's row loop. A kernel of its own, so that `charrnn
    sample` (lstm_generate) does not compile it on a cold cache (~2 s of CPU with the tiles,
    1.2 s without)."""
    if beta == 0:
        _zero(c)
    if c.shape[0] <= 2:
        _mm_exact_rows(a, b, c)
    elif c.shape[0] < tiles.TILE_MIN_ROWS or not tiles.TILES_FASTER:
        _mm_exact_blocked(a, b, c, EXACT_COLS, 0)
    else:
        done = tiles.mm_exact_tiled(a, b, c)
        if done < c.shape[1]:
            _mm_exact_blocked(a, b, c, EXACT_COLS, done)


@njit(inline="always", error_model="numpy")
def _zero(c):
    f = c.dtype.type
    for m in range(c.shape[0]):
        for n in range(c.shape[1]):
            c[m, n] = f(0.0)


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _mm_exact_rows(a, b, c):
    """mm_exact's c += a @ b: four rows of b per pass over every row of c, b read once, c in L1
    for a few rows."""
    M, N = c.shape
    Kd = a.shape[1]
    K4 = Kd - Kd % 4
    for k in range(0, K4, 4):
        for m in range(M):
            x0, x1, x2, x3 = a[m, k], a[m, k + 1], a[m, k + 2], a[m, k + 3]
            for n in range(N):
                c[m, n] += x0 * b[k, n] + x1 * b[k + 1, n] + x2 * b[k + 2, n] + x3 * b[k + 3, n]
    for k in range(K4, Kd):
        for m in range(M):
            x = a[m, k]
            for n in range(N):
                c[m, n] += x * b[k, n]


@njit(inline="always", fastmath={"contract"}, error_model="numpy")
def _mm_exact_blocked(a, b, c, width, start):
    """mm_exact_batch's c[:, start:] += a @ b[:, start:] for three rows or more: column blocks of
    `width`; in each, four rows of b at a
    time, each vector of them loaded once for two rows of c (the batch's shared reads, which
    halve the loads per multiply-add), and the block of c (rows x width) stays in cache over k.
    The column index is unsigned so that Numba emits no negative-index wrap-around, which kept
    LLVM from vectorising a loop that does not start at 0. Two rows at a time, not four: with
    four, LLVM's run-time alias checks (eight row pointers) exceed its limit and the loop stays
    scalar."""
    M, N = c.shape
    Kd = a.shape[1]
    K4 = Kd - Kd % 4
    for n0 in range(start, N, width):
        u0, u1 = np.uint64(n0), np.uint64(min(n0 + width, N))
        for k in range(0, K4, 4):
            m = 0
            while m + 2 <= M:
                x0, x1, x2, x3 = a[m, k], a[m, k + 1], a[m, k + 2], a[m, k + 3]
                z0, z1, z2, z3 = a[m + 1, k], a[m + 1, k + 1], a[m + 1, k + 2], a[m + 1, k + 3]
                for n in range(u0, u1):
                    y0, y1, y2, y3 = b[k, n], b[k + 1, n], b[k + 2, n], b[k + 3, n]
                    c[m, n] += x0 * y0 + x1 * y1 + x2 * y2 + x3 * y3
                    c[m + 1, n] += z0 * y0 + z1 * y1 + z2 * y2 + z3 * y3
                m += 2
            if m < M:
                x0, x1, x2, x3 = a[m, k], a[m, k + 1], a[m, k + 2], a[m, k + 3]
                for n in range(u0, u1):
                    c[m, n] += x0 * b[k, n] + x1 * b[k + 1, n] + x2 * b[k + 2, n] + x3 * b[k + 3, n]
        for k in range(K4, Kd):
            for m in range(M):
                x = a[m, k]
                for n in range(u0, u1):
                    c[m, n] += x * b[k, n]


# ---------------------------------------------------------------- vectorisable exp and expm1
def _reduce(v, q, ib):
    """v = n ln2 + r, |r| <= ln2/2: q = e^r - 1 by Taylor; ib = the bits of 2^n' as float32 and
    v = s, with 2^n = 2^n' s and n' in the normal exponent range (s = 2^-64 where e^v is
    subnormal, 2 at the top of the range, else 1)."""
    f = v.dtype.type
    for k in range(v.size):
        x = min(max(v[k], f(-104.0)), f(89.0))      # e^-104 rounds to 0, e^89 overflows
        n = np.floor(x * f(1.4426950408889634) + f(0.5))
        r = (x - n * f(0.693145751953125)) - n * f(1.428606765330187e-06)
        q[k] = r * (f(1.0) + r * (f(0.5) + r * (f(1 / 6) + r * (f(1 / 24) + r * (
            f(1 / 120) + r * (f(1 / 720) + r * f(1 / 5040)))))))
        ni = np.int32(n)
        lo, hi = ni < np.int32(-126), ni > np.int32(127)
        ni = ni + np.int32(64) if lo else (ni - np.int32(1) if hi else ni)
        ib[k] = (ni + np.int32(127)) << np.int32(23)
        v[k] = f(2.0 ** -64) if lo else (f(2.0) if hi else f(1.0))


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _exp_fast(v, q, ib, m):
    """v = e^v - m (m 0 or 1), as (2^n' q + (2^n' - m/s)) s: 2^n' - m is exact, so expm1 has
    no cancellation near zero, and where e^v is subnormal the final product rounds once."""
    _reduce_jit(v, q, ib)
    s = ib[:v.size].view(np.float32)
    f = np.float32
    for k in range(v.size):
        sc = v[k]
        inv = f(2.0 ** 64) if sc < f(1.0) else (f(0.5) if sc > f(1.0) else f(1.0))
        v[k] = (s[k] * q[k] + (s[k] - m * inv)) * sc


_reduce_jit = njit(inline="always", fastmath=_FM, error_model="numpy")(_reduce)


def vexp_m(v, q, ib, m):
    """v[:] = exp(v) - m in place, m 0 (exp) or 1 (expm1); q, ib: float and int32 work
    buffers at least as long as v."""


@overload(vexp_m)
def _vexp_m_impl(v, q, ib, m):
    if v.dtype == types.float32:
        return lambda v, q, ib, m: _exp_fast(v, q, ib, np.float32(m))

    def exact(v, q, ib, m):
        for k in range(v.size):
            v[k] = math.expm1(v[k]) if m else math.exp(v[k])
    return exact


@njit(inline="always", error_model="numpy")
def vexpm1(v, q, ib):
    vexp_m(v, q, ib, 1)


@njit(inline="always", error_model="numpy")
def vexp(v, q, ib):
    vexp_m(v, q, ib, 0)


# ---------------------------------------------------------------- LSTM
@njit(inline="always", error_model="numpy")
def _sigmoid_of(x, e, one):
    """sigmoid(x) from e = exp(-|x|): 1/(1+e) or e/(1+e), never a huge denominator. `one`
    carries the float type (a plain 1 would promote float32 to float64)."""
    return (one if x >= 0 else e) / (one + e)


@njit(inline="always", error_model="numpy")
def _tanh_of(x, t, one):
    """tanh(x) from t = expm1(-2|x|) in [-1, 0]: sign(x) * -t / (t + 2)."""
    y = -t / (t + (one + one))
    return y if x >= 0 else -y


@njit(inline="always", error_model="numpy")
def _softsign(x, one):
    """x / (1 + |x|); |x| capped at 2^60, past which the result rounds to +-1 in float32 and
    float64, so that 1 + |x| stays finite and far from overflow (inf gives +-1, not NaN)."""
    m = min(abs(x), one * 1152921504606846976.0)
    y = m / (one + m)
    return y if x >= 0 else -y


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _lstm_cells(a, bias, c_prev, kind, c_out, tc_out, h_out, v, w, q, ib):
    """The LSTM cell for B sequences: a (B,4H) holds the pre-activations without bias and
    becomes the activations i, f, g, o; writes c, act(c), h (B,H). v (B,4H), w (B,H)
    and q, ib (B*4H) are work buffers: v's first 3BH floats take exp(-|x|) of the sigmoid gates
    (i, f, o), the last BH expm1(-2|x|) of g. Whole-array indexing, no per-row views: a view
    costs reference counting, and short loops over few arrays are what LLVM vectorises."""
    B, G = a.shape
    H = G // 4
    f = a.dtype.type
    one, two = f(1.0), f(2.0)
    flat = v.reshape(B * G)
    vs = flat[:3 * B * H].reshape(B, 3 * H)
    vt = flat[3 * B * H:].reshape(B, H)
    for bi in range(B):
        for j in range(G):
            a[bi, j] += bias[j]
        for j in range(2 * H):
            vs[bi, j] = -abs(a[bi, j])
        for j in range(H):
            vs[bi, 2 * H + j] = -abs(a[bi, 3 * H + j])
        if kind == TANH:
            for j in range(H):
                vt[bi, j] = -two * abs(a[bi, 2 * H + j])
    vexp(vs.reshape(3 * B * H), q, ib)
    if kind == TANH:
        vexpm1(vt.reshape(B * H), q, ib)
    for bi in range(B):
        if kind == TANH:
            for j in range(H):
                a[bi, 2 * H + j] = _tanh_of(a[bi, 2 * H + j], vt[bi, j], one)
        else:
            for j in range(H):
                a[bi, 2 * H + j] = _softsign(a[bi, 2 * H + j], one)
        for j in range(2 * H):
            a[bi, j] = _sigmoid_of(a[bi, j], vs[bi, j], one)
        for j in range(H):
            a[bi, 3 * H + j] = _sigmoid_of(a[bi, 3 * H + j], vs[bi, 2 * H + j], one)
        for j in range(H):
            c = a[bi, H + j] * c_prev[bi, j] + a[bi, j] * a[bi, 2 * H + j]
            c_out[bi, j] = c
            w[bi, j] = -two * abs(c)
    if kind == TANH:
        vexpm1(w.reshape(B * H), q, ib)
        for bi in range(B):
            for j in range(H):
                t = _tanh_of(c_out[bi, j], w[bi, j], one)
                tc_out[bi, j] = t
                h_out[bi, j] = a[bi, 3 * H + j] * t
    else:
        for bi in range(B):
            for j in range(H):
                t = _softsign(c_out[bi, j], one)
                tc_out[bi, j] = t
                h_out[bi, j] = a[bi, 3 * H + j] * t


# ---------------------------------------------------------------- the LSTM cell, compiled once
@intrinsic
def _ptr(typingctx, arr):
    """The address of a C-contiguous array's first element, as a typed pointer (a C function's
    argument); any other layout is refused when the caller compiles."""
    if not isinstance(arr, types.Array) or arr.layout != "C":
        return None

    def codegen(context, builder, sig, args):
        return context.make_array(sig.args[0])(context, builder, args[0]).data
    return types.CPointer(arr.dtype)(arr), codegen


def _cells_sig(f):
    """The C signature of _lstm_cells_c32/_c64: the arrays by address, then B and H."""
    p = types.CPointer(f)
    return types.void(p, p, p, _i64, p, p, p, p, p, p, types.CPointer(types.int32), _i64, _i64)


@njit(inline="always", error_model="numpy")
def _cells_at(a, bias, c_prev, kind, c_out, tc_out, h_out, v, w, q, ib, B, H):
    """_lstm_cells on buffers given by address, B rows of H units."""
    G = 4 * H
    _lstm_cells(carray(a, (B, G)), carray(bias, (G,)), carray(c_prev, (B, H)), kind, carray(c_out, (B, H)),
                carray(tc_out, (B, H)), carray(h_out, (B, H)), carray(v, (B, G)), carray(w, (B, H)),
                carray(q, (B * G,)), carray(ib, (B * G,)))


# one Python function per float type: a cached C function is found by its function's name
def _lstm_cells_c32(a, bias, c_prev, kind, c_out, tc_out, h_out, v, w, q, ib, B, H):
    _cells_at(a, bias, c_prev, kind, c_out, tc_out, h_out, v, w, q, ib, B, H)


def _lstm_cells_c64(a, bias, c_prev, kind, c_out, tc_out, h_out, v, w, q, ib, B, H):
    _cells_at(a, bias, c_prev, kind, c_out, tc_out, h_out, v, w, q, ib, B, H)


def _draw_sig(f):
    """The C signature of _draw_rows_c32/_c64: draw_rows's arrays by address, then B rows of V."""
    p, f64 = types.CPointer, types.float64
    return types.void(p(f), p(f64), f64, _i64, p(_i64), p(f64), _i64, _i64)


@njit(inline="always", error_model="numpy")
def _draw_at(logits, u, temp, top_k, codes, logp, B, V):
    """draw_rows on buffers given by address."""
    _draw_rows(carray(logits, (B, V)), carray(u, (B,)), temp, top_k, carray(codes, (B,)), carray(logp, (B,)))


def _draw_rows_c32(logits, u, temp, top_k, codes, logp, B, V):
    _draw_at(logits, u, temp, top_k, codes, logp, B, V)


def _draw_rows_c64(logits, u, temp, top_k, codes, logp, B, V):
    _draw_at(logits, u, temp, top_k, codes, logp, B, V)


# The C functions the kernels call by address: name -> (the Python function per float type,
# float32 first; its C signature for a float type; its fast-math flags, those of the code it
# held when inlined: the draw has none, its sums must not be reassociated).
_C_FUNCS = {"cells": ((_lstm_cells_c32, _lstm_cells_c64), _cells_sig, _FM),
            "draw": ((_draw_rows_c32, _draw_rows_c64), _draw_sig, False)}
_ADDRESS: dict = {}       # (name, dtype) -> the compiled C function's address
_COMPILING: dict = {}     # dtype -> (the subprocess compiling C functions into the cache, their names)
_CELLS_LOCK = threading.Lock()   # lanes ask for the cell at once: one waits or compiles, the rest reuse it


def _c_py(name: str, dt: np.dtype):
    pys, sig, _ = _C_FUNCS[name]
    return (pys[0], sig(types.float32)) if dt == np.float32 else (pys[1], sig(types.float64))


def _c_cached(name: str, dt: np.dtype) -> bool | None:
    """Whether Numba's on-disk cache holds C function `name` for `dt` on this machine: the
    lookup Numba itself makes, without loading the code. None when that cannot be told (caching
    off, or a Numba whose cache internals differ): then nothing is compiled aside."""
    try:
        from numba.core.caching import FunctionCache
        from numba.core.registry import cpu_target
        py, sig = _c_py(name, dt)
        cache = FunctionCache(py)
        key = cache._index_key(sig, cpu_target.target_context.codegen())
        return key in cache._cache_file._load_index()
    except Exception:
        return None


def compile_cells_aside(dtype, draw: bool = False, first: str = "") -> bool:
    """On a cold cache, start compiling the LSTM cell's C function for `dtype` (and, with
    `draw`, sampling's draw_rows as one) into Numba's cache in a second process, so that the
    kernels compiling here meanwhile (they take these by address, not their code) and the C
    functions use both cores: the largest pieces of a first `charrnn sample` or training step.
    c_function_at then waits for that process and loads the result, which is what every later
    run loads too. `first`: Python statements the second process runs before (with np, K = this
    module and dt = the dtype): calls that compile kernels into the cache which this process
    will load when it comes to them, if they are there by then (else it compiles them too: the
    same code either way). Returns whether a process was started."""
    dt = np.dtype(dtype)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    names = [n for n in (("cells", "draw") if draw else ("cells",))
             if (n, dt) not in _ADDRESS and _c_cached(n, dt) is False]
    if cores < 2 or dt in _COMPILING or not names:
        return False      # one core: the two would take turns, and the second process costs its start
    import subprocess
    import sys
    code = (f"import numpy as np; from charrnn.backends import cpu_kernels as K; dt = np.dtype('{dt.str}')\n"
            f"{first}\n" + "\n".join(f"K.c_function_at('{n}', dt)" for n in names))
    try:
        _COMPILING[dt] = (subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), set(names))
    except OSError:
        return False
    return True


def c_function_at(name: str, dtype) -> int:
    """The address of C function `name` of _C_FUNCS for `dtype` (float32 or float64), compiled
    (or loaded from the cache) on first use, after the process compiling it aside (if any) has
    finished."""
    at = _ADDRESS.get((name, dtype))     # the kernels' callers pass an np.dtype; a type (np.float32) goes on below
    if at is not None:
        return at
    dt = np.dtype(dtype)
    with _CELLS_LOCK:
        at = _ADDRESS.get((name, dt))
        if at is not None:
            return at
        aside = _COMPILING.get(dt)
        if aside is not None and name in aside[1]:   # its result is in the cache unless it failed: then compile here
            del _COMPILING[dt]
            try:
                aside[0].wait(timeout=300)
            except Exception:
                aside[0].kill()
        py, sig = _c_py(name, dt)
        at = _ADDRESS[(name, dt)] = cfunc(sig, cache=True, fastmath=_C_FUNCS[name][2], error_model="numpy")(py).address
    return at


def lstm_cells_at(dtype) -> int:
    """The address of the LSTM cell (_lstm_cells) compiled as one C function for `dtype`
    (float32 or float64), compiled (or loaded from the cache) on first use. The kernels take it
    as their `cells` argument and call it (_call_cells), so its code, the largest part of every
    LSTM kernel, is compiled once: inlined, Numba typed it again in each kernel and LLVM
    optimised it again in each, seconds apiece on a cold cache. An address, not the function
    object: a plain integer keeps the kernels' dispatch fast (a compiled function as an argument
    costs ~25 us a call to type), and the call per time step costs nothing measurable. The
    caller passes the address for its arrays' dtype; the kernels cannot check it."""
    return c_function_at("cells", dtype)


_STAND_INS: dict = {}     # dtype -> a ctypes callback (kept alive here) with the cell's signature


def _stand_in_at(dt: np.dtype) -> int:
    """The address of a stand-in for the cell that only writes zeros where the cell writes (the
    activations, c, act(c), h): a C-callable Python function, so it costs no compiling. The
    warm-up's tiny model runs its first training step through it while the real cell compiles
    aside, so that the step's other kernels (backward, softmax, ...) compile meanwhile instead of
    after waiting for the cell; zeros keep everything after it finite. Never used for results."""
    with _CELLS_LOCK:
        fn = _STAND_INS.get(dt)
        if fn is None:
            size = dt.itemsize

            def zeros(a, bias, c_prev, kind, c_out, tc_out, h_out, v, w, q, ib, B, H):
                for at, n in ((a, 4 * B * H), (c_out, B * H), (tc_out, B * H), (h_out, B * H)):
                    ctypes.memset(at, 0, n * size)
            vp, i64 = ctypes.c_void_p, ctypes.c_int64
            fn = _STAND_INS[dt] = ctypes.CFUNCTYPE(None, vp, vp, vp, i64, vp, vp, vp, vp, vp, vp, vp, i64, i64)(zeros)
    return ctypes.cast(fn, ctypes.c_void_p).value


def call_with_cells(kernel, dtype, *args, draw: bool = False, stand_in: bool = False) -> None:
    """kernel(*args, lstm_cells_at(dtype)), and the draw's address after it with `draw`. While
    C functions are still being compiled aside, the kernel is compiled for these arguments first
    (an address is an int64 like any other), and only then are the addresses asked for: that is
    what lets the two compile at once. `stand_in` (a warm-up's tiny model, training only): while
    the cell is still compiling aside, run through _stand_in_at's zeros instead of waiting."""
    if _COMPILING:
        dt = np.dtype(dtype)
        kernel.compile(tuple(kernel.typeof_pyval(a) for a in args) + (kernel.typeof_pyval(0),) * (2 if draw else 1))
        if stand_in and not draw and dt in _COMPILING:
            kernel(*args, _stand_in_at(dt))
            return
    if draw:
        kernel(*args, c_function_at("cells", dtype), c_function_at("draw", dtype))
    else:
        kernel(*args, c_function_at("cells", dtype))


@intrinsic
def _call_c(typingctx, at, *args):
    """Call the C function at address `at` (an integer) with `args` (typed pointers, integers,
    floats: its C signature's), for nothing back."""
    if not isinstance(at, types.Integer):
        return None
    tup = types.StarArgTuple(args)

    def codegen(context, builder, sig, llargs):
        fnty = ir.FunctionType(ir.VoidType(), [context.get_value_type(t) for t in tup.types])
        builder.call(builder.inttoptr(llargs[0], fnty.as_pointer()), cgutils.unpack_tuple(builder, llargs[1]))
        return context.get_dummy_value()
    return types.void(at, tup), codegen


@njit(inline="always", error_model="numpy")
def _call_cells(cells, a, bias, c_prev, kind, c_out, tc_out, h_out, v, w, q, ib):
    """_lstm_cells's arguments, through the C function at address `cells` (lstm_cells_at)."""
    _call_c(cells, _ptr(a), _ptr(bias), _ptr(c_prev), np.int64(kind), _ptr(c_out), _ptr(tc_out), _ptr(h_out),
            _ptr(v), _ptr(w), _ptr(q), _ptr(ib), np.int64(a.shape[0]), np.int64(a.shape[1] // 4))


@njit(inline="always", error_model="numpy")
def _call_draw(draw, logits, u, temp, top_k, codes, logp):
    """draw_rows's arguments, through the C function at address `draw` (c_function_at("draw"))."""
    _call_c(draw, _ptr(logits), _ptr(u), np.float64(temp), np.int64(top_k), _ptr(codes), _ptr(logp),
            np.int64(logits.shape[0]), np.int64(logits.shape[1]))


@njit(inline="always", error_model="numpy")
def _cell_buffers(B, G, dt):
    """The cell function's work buffers for B rows of G = 4H gates (see _lstm_cells)."""
    return np.empty((B, G), dt), np.empty((B, G // 4), dt), np.empty(B * G, dt), np.empty(B * G, np.int32)


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def lstm_forward(gates, bias, Wh, hs, cs, tcs, kind, cells):
    """A window's time loop. gates (T,B,4H) holds the input projections without bias and
    becomes the activations; hs, cs (T+1,B,H) hold the carried state at [0]; fills the rest.
    cells: lstm_cells_at(dtype). lstm_forward_t is the same with the product transposed."""
    T, B, G = gates.shape
    v, w, q, ib = _cell_buffers(B, G, gates.dtype)
    for t in range(T):
        a = gates[t]
        _mm(hs[t], Wh, a, 1.0)
        _call_cells(cells, a, bias, cs[t], kind, cs[t + 1], tcs[t], hs[t + 1], v, w, q, ib)


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def lstm_forward_t(gates, bias, WhT, hs, cs, tcs, kind, cells):
    """lstm_forward with the recurrent product run as gates^T = Wh^T h^T on WhT, Wh transposed
    and contiguous, which OpenBLAS does 1.3-1.8x faster at 32-64 rows of a wide layer: the
    large matrix is then its packed left operand (the caller decides, CpuBackend._transposed).
    A kernel of its own, so a run compiles only the product it uses."""
    T, B, G = gates.shape
    H = G // 4
    v, w, q, ib = _cell_buffers(B, G, gates.dtype)
    pT = np.empty((G, B), gates.dtype)
    hT = np.empty((H, B), gates.dtype)
    _transpose(hs[0], hT)
    for t in range(T):
        a = gates[t]
        gemm(WhT, hT, pT, False, False, 0.0)
        _add_transposed(pT, a)
        _call_cells(cells, a, bias, cs[t], kind, cs[t + 1], tcs[t], hs[t + 1], v, w, q, ib)
        if t + 1 < T:
            _transpose(hs[t + 1], hT)


TILE = 16   # transposes go by 16x16 tiles: 16 cache lines of the strided side stay in L1


@njit(inline="always", error_model="numpy")
def _transpose(x, out):
    """out[j, i] = x[i, j]."""
    R, C = x.shape
    for j0 in range(0, C, TILE):
        j1 = min(j0 + TILE, C)
        for i in range(R):
            for j in range(j0, j1):
                out[j, i] = x[i, j]


@njit(cache=True, nogil=True, error_model="numpy")
def transpose(x, out):
    """out = x.T, tiled (see _transpose)."""
    _transpose(x, out)


@njit(inline="always", error_model="numpy")
def _add_transposed(xT, out):
    """out[i, j] += xT[j, i]. Not _transpose with an add flag: this one tiles over out's columns,
    so its contiguous side is the one written. Tiled the other way (16 rows written at a time,
    4H floats apart: a power-of-two stride, likely L1 set conflicts), 3x512 B32 trained 9%
    slower and 2x512 B64 13% slower."""
    R, C = out.shape
    for j0 in range(0, C, TILE):
        j1 = min(j0 + TILE, C)
        for i in range(R):
            for j in range(j0, j1):
                out[i, j] += xT[j, i]


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _lstm_dgates(t, dh_out, cs, gates, tcs, kind, da, dh, dc):
    """Step t of the backward: dh, dc (B,H) become the gradients on h and c at step t and da[t]
    the gradient on its pre-activations; dc then leaves the forget gate for step t - 1."""
    B, H = dh.shape
    f = da.dtype.type
    one = f(1.0)
    g4, d4, cp, tc, dho = gates[t], da[t], cs[t], tcs[t], dh_out[t]
    for bi in range(B):
        if kind == TANH:
            for j in range(H):
                y = tc[bi, j]
                d = dho[bi, j] + dh[bi, j]
                dcc = dc[bi, j] + d * g4[bi, 3 * H + j] * (one - y * y)
                dh[bi, j] = d
                dc[bi, j] = dcc
        else:
            for j in range(H):
                y = tc[bi, j]
                d = dho[bi, j] + dh[bi, j]
                dcc = dc[bi, j] + d * g4[bi, 3 * H + j] * ((one - abs(y)) * (one - abs(y)))
                dh[bi, j] = d
                dc[bi, j] = dcc
        for j in range(H):
            i, g = g4[bi, j], g4[bi, 2 * H + j]
            d4[bi, j] = dc[bi, j] * g * i * (one - i)
        for j in range(H):
            fg = g4[bi, H + j]
            d4[bi, H + j] = dc[bi, j] * cp[bi, j] * fg * (one - fg)
        if kind == TANH:
            for j in range(H):
                i, g = g4[bi, j], g4[bi, 2 * H + j]
                d4[bi, 2 * H + j] = dc[bi, j] * i * (one - g * g)
        else:
            for j in range(H):
                i, g = g4[bi, j], g4[bi, 2 * H + j]
                d4[bi, 2 * H + j] = dc[bi, j] * i * ((one - abs(g)) * (one - abs(g)))
        for j in range(H):
            o = g4[bi, 3 * H + j]
            d4[bi, 3 * H + j] = dh[bi, j] * tc[bi, j] * o * (one - o)
        for j in range(H):
            dc[bi, j] *= g4[bi, H + j]


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def lstm_backward(dh_out, WhT, cs, gates, tcs, kind, da, dh, dc, carry):
    """The backward time loop: dh_out (T,B,H) is the gradient on each step's output; writes
    da (T,B,4H), the gradient on the pre-activations. dh, dc (B,H) hold the gradients on the
    last step's h and c from the steps after these T (zeros at a window's end) and, with
    `carry`, become those on the state entering step 0, for the steps before (a window split
    in chunks, CpuBackend's lanes). A window's entering state is detached (truncated BPTT): no
    carry there. The recurrent product is da @ Wh^T on the contiguous WhT."""
    T = dh_out.shape[0]
    for t in range(T - 1, -1, -1):
        _lstm_dgates(t, dh_out, cs, gates, tcs, kind, da, dh, dc)
        if t > 0 or carry:
            gemm(da[t], WhT, dh, False, False, 0.0)


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def lstm_backward_t(dh_out, Wh, cs, gates, tcs, kind, da, dh, dc, carry):
    """lstm_backward with the recurrent product run as dh^T = Wh da^T, as in lstm_forward_t
    (1.2-1.6x faster at 32-64 rows)."""
    T, B, H = dh_out.shape
    dT = np.empty((4 * H, B), da.dtype)
    dhT = np.empty((H, B), da.dtype)
    for t in range(T - 1, -1, -1):
        _lstm_dgates(t, dh_out, cs, gates, tcs, kind, da, dh, dc)
        if t > 0 or carry:
            _transpose(da[t], dT)
            gemm(Wh, dT, dhT, False, False, 0.0)
            _transpose(dhT, dh)


@njit(inline="always", error_model="numpy")
def _mm_step(a, b, c, beta, fixed, batched):
    """lstm_step's products: mm_exact when `fixed` (mm_exact_batch, the same bits, when also
    `batched`), else mm (BLAS above SMALL_M rows)."""
    if fixed:
        if batched:
            mm_exact_batch(a, b, c, beta)
        else:
            mm_exact(a, b, c, beta)
    else:
        mm(a, b, c, beta)


@njit(inline="always", error_model="numpy")
def gather_codes(flat, off, width, codes, out):
    """out[b] = the `width` values at flat[off + codes[b] * width]: a one-hot layer's input
    product (a row of Wx) or an embedding lookup, from the flat parameter buffer."""
    for bi in range(codes.shape[0]):
        r = off + codes[bi] * width
        for j in range(width):
            out[bi, j] = flat[r + j]


def lstm_step(flat, offs, embed_off, embed, out_w, codes, state, new_state, logits, kind, cells, fixed,
              batched):
    """One step of the whole model for sampling, every layer in this one call.
    offs[l] = (Wx, Wh, b) offsets into flat; embed_off < 0 means one-hot input.
    state, new_state (L,2,B,H); logits (B,V) gets the output layer with its bias; cells:
    lstm_cells_at(flat.dtype). fixed: every product in mm_exact and the cells row by row, so each
    row's result is independent of the batch (charrnn serve's batches, and batch 1); batched:
    the products in mm_exact_batch (charrnn serve's step_rows), which gives the same bits."""
    L, _, B, H = state.shape
    G = 4 * H
    V = logits.shape[1]
    dt = flat.dtype
    pre = np.empty((B, G), dt)
    v = np.empty((B, G), dt)
    w = np.empty((B, H), dt)
    q = np.empty(B * G, dt)
    ib = np.empty(B * G, np.int32)
    tc = np.empty((B, H), dt)
    for l in range(L):
        o_x, o_h, o_b = offs[l, 0], offs[l, 1], offs[l, 2]
        if l == 0 and embed_off < 0:
            gather_codes(flat, o_x, G, codes, pre)
        elif l == 0:
            x = np.empty((B, embed), dt)
            gather_codes(flat, embed_off, embed, codes, x)
            _mm_step(x, flat[o_x:o_x + embed * G].reshape(embed, G), pre, 0.0, fixed, batched)
        else:
            _mm_step(new_state[l - 1, 0], flat[o_x:o_x + H * G].reshape(H, G), pre, 0.0, fixed, batched)
        _mm_step(state[l, 0], flat[o_h:o_h + H * G].reshape(H, G), pre, 1.0, fixed, batched)
        if fixed:       # row by row: a row's exps take the same vector lanes whatever the batch
            for bi in range(B):
                _call_cells(cells, pre[bi:bi + 1], flat[o_b:o_b + G], state[l, 1, bi:bi + 1], kind,
                            new_state[l, 1, bi:bi + 1], tc[bi:bi + 1], new_state[l, 0, bi:bi + 1], v, w, q, ib)
        else:
            _call_cells(cells, pre, flat[o_b:o_b + G], state[l, 1], kind, new_state[l, 1], tc, new_state[l, 0],
                        v, w, q, ib)
    _mm_step(new_state[L - 1, 0], flat[out_w:out_w + H * V].reshape(H, V), logits, 0.0, fixed, batched)
    ob = out_w + H * V
    for bi in range(B):
        for k in range(V):
            logits[bi, k] += flat[ob + k]


# Without fastmath: its own arithmetic is one add per logit (mm and the cell function carry
# theirs), and lstm_generate, which inlines it, also inlines draw_rows, whose sums must not be
# reassociated.
_lstm_step = njit(inline="always", error_model="numpy")(lstm_step)
lstm_step = njit(cache=True, nogil=True, error_model="numpy")(lstm_step)


def draw_rows(logits, u, temp, top_k, codes, logp):
    """sample.distribution + sample.draw + sample.log_softmax_at for every row, in float64:
    temperature, top-k (ties at the k-th value kept), inverse CDF on uniform u[row]. Only the
    order of the softmax sum differs from NumPy's (pairwise there), so a draw can differ only
    when u lands within rounding of a CDF boundary."""
    B, V = logits.shape
    z = np.empty(V, np.float64)
    srt = np.empty(V, np.float64)
    for bi in range(B):
        m = -np.inf
        for k in range(V):
            m = max(m, np.float64(logits[bi, k]))
        s = 0.0
        for k in range(V):
            s += math.exp(np.float64(logits[bi, k]) - m)
        if temp == 0.0:
            best = 0
            for k in range(V):
                if logits[bi, k] > logits[bi, best]:
                    best = k
            for k in range(V):
                z[k] = 1.0 if k == best else 0.0
        else:
            for k in range(V):
                z[k] = np.float64(logits[bi, k]) / temp
            if top_k > 0 and top_k < V:
                # the k-th largest by an insertion sort written out: np.sort would compile
                # Numba's quicksort, seconds of a cold start, for at most a few hundred values
                for k in range(V):
                    val, i = z[k], k
                    while i > 0 and srt[i - 1] > val:
                        srt[i] = srt[i - 1]
                        i -= 1
                    srt[i] = val
                kth = srt[V - top_k]
                for k in range(V):
                    if z[k] < kth:
                        z[k] = -np.inf
            zm = -np.inf
            for k in range(V):
                zm = max(zm, z[k])
            tot = 0.0
            for k in range(V):
                z[k] = math.exp(z[k] - zm)
                tot += z[k]
            for k in range(V):
                z[k] /= tot
        acc = 0.0                          # z becomes the CDF
        for k in range(V):
            acc += z[k]
            z[k] = acc
        cut = u[bi] * z[V - 1]
        c = 0
        for k in range(V):
            if z[k] < cut:
                c += 1
        c = min(c, V - 1)
        codes[bi] = c
        logp[bi] = np.float64(logits[bi, c]) - m - math.log(s)


_draw_rows = njit(inline="always", error_model="numpy")(draw_rows)
draw_rows = njit(cache=True, nogil=True, error_model="numpy")(draw_rows)


def _generate(flat, offs, embed_off, embed, out_w, codes, state, logits, kind, u, temp, top_k,
              out_codes, out_logp, cells, draw, fixed):
    """len(u) sampling steps of the whole model in one call: lstm_step, then draw_rows with
    u[s] (one uniform per row). codes (B,) holds the last code and state (L,2,B,H) the state
    on entry; both hold the newest on return. logits (B,V) is a work buffer. Writes
    out_codes, out_logp (steps, B). The step is inlined (compiled here once rather than on its
    own and again as part of this kernel); the draw is called by address (`draw`:
    c_function_at("draw", dtype)) like the cell, so on a cold cache it compiles in the second
    process with the cell (compile_cells_aside) while this kernel compiles here: inlined, it was
    a quarter of this kernel's compile time, on the first `charrnn sample`'s critical path
    (issue 28). `fixed` is a constant in each kernel below, so each compiles only its own
    products (Numba prunes the other branch)."""
    nxt = np.empty_like(state)
    for st in range(u.shape[0]):
        _lstm_step(flat, offs, embed_off, embed, out_w, codes, state, nxt, logits, kind, cells, fixed, False)
        # element by element, like draw_rows' copies: slice assignment compiles shape-error formatting
        s_flat, n_flat = state.reshape(-1), nxt.reshape(-1)
        for i in range(s_flat.shape[0]):
            s_flat[i] = n_flat[i]
        _call_draw(draw, logits, u[st], temp, top_k, out_codes[st], out_logp[st])
        for bi in range(codes.shape[0]):
            codes[bi] = out_codes[st, bi]


_generate = njit(inline="always", error_model="numpy")(_generate)


@njit(cache=True, error_model="numpy")
def lstm_generate(flat, offs, embed_off, embed, out_w, codes, state, logits, kind, u, temp, top_k,
                  out_codes, out_logp, cells, draw):
    """_generate for at most SMALL_M rows: every product in mm_exact, so a row's text does not
    depend on the batch (`charrnn sample` writes what `charrnn serve` writes for a seed). The
    first `charrnn sample` compiles only this: no BLAS path (issue 28)."""
    _generate(flat, offs, embed_off, embed, out_w, codes, state, logits, kind, u, temp, top_k,
              out_codes, out_logp, cells, draw, True)


@njit(cache=True, error_model="numpy")
def lstm_generate_many(flat, offs, embed_off, embed, out_w, codes, state, logits, kind, u, temp, top_k,
                       out_codes, out_logp, cells, draw):
    """_generate for more than SMALL_M rows: products through mm (BLAS)."""
    _generate(flat, offs, embed_off, embed, out_w, codes, state, logits, kind, u, temp, top_k,
              out_codes, out_logp, cells, draw, False)


# ---------------------------------------------------------------- input and output sides
@njit(cache=True, nogil=True, error_model="numpy")
def gather_rows(W, codes, out):
    """out[n] = W[codes[n]]: a one-hot input product as a row gather."""
    for n in range(codes.shape[0]):
        row = W[codes[n]]
        for j in range(out.shape[1]):         # element by element: a row assignment would compile
            out[n, j] = row[j]                # Numba's shape-error formatting, seconds on a cold cache


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def add_bias(out, b):
    for n in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[n, j] += b[j]


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def scatter_add_rows(G, codes, d):
    """G[codes[n]] += d[n], rows in order."""
    for n in range(codes.shape[0]):
        row = G[codes[n]]
        for j in range(d.shape[1]):
            row[j] += d[n, j]


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def colsum_add(g, d):
    """g += d summed over rows, accumulated in float64 row by row (a fixed order)."""
    s = np.zeros(d.shape[1])
    for n in range(d.shape[0]):
        for j in range(d.shape[1]):
            s[j] += d[n, j]
    for j in range(d.shape[1]):
        g[j] += s[j]


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def softmax_xent(logits, y, scale, want_grad):
    """Summed -log softmax(logits)[y] over rows; with want_grad, logits become scale*(p - onehot(y))."""
    N, V = logits.shape
    f = logits.dtype.type
    v = np.empty(V, logits.dtype)
    q = np.empty(V, logits.dtype)
    ib = np.empty(V, np.int32)
    total = 0.0
    for n in range(N):
        row = logits[n]
        m = row[0]
        for k in range(1, V):
            m = max(m, row[k])
        for k in range(V):
            v[k] = row[k] - m
        target = v[y[n]]
        vexp(v, q, ib)
        s = f(0.0)
        for k in range(V):
            s += v[k]
        total += math.log(s) - target
        if want_grad:
            w = f(scale) / s
            for k in range(V):
                row[k] = v[k] * w
            row[y[n]] -= f(scale)
    return total


# the mask hash of charrnn/dropout.py, compiled from its source (the CUDA kernels compile the same)
_uniform = njit(inline="always")(dropout.uniform)


@njit(inline="always", error_model="numpy")
def _mask_row(n, B, H, step0, total, off):
    """The mask index of element (n, 0) of rows of H units, row n = stream n % B of step
    step0 + n // B: ((step0 + n // B) * total + off + n % B) * H, as charrnn/dropout.py's masks
    lay them out (uint64 arguments; total and off place these B streams in a global batch)."""
    nu, Bu = np.uint64(n), np.uint64(B)
    t = nu // Bu
    return ((step0 + t) * total + off + (nu - t * Bu)) * np.uint64(H)


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_to(a, out, kept, seed, step0, B, total, off, p, scale):
    """out = a * mask for rows of H units (in place when out is a): the mask of element (n, j)
    is charrnn/dropout.py's for index _mask_row(n, ...) + j, scale (1 / (1 - p) in a's float
    type) where kept, else 0. kept[n, j] records which, for the backward."""
    H = a.shape[1]
    zero = scale - scale
    for n in range(a.shape[0]):
        row = _mask_row(n, B, H, step0, total, off)
        for j in range(H):
            k = _uniform(seed, row + np.uint64(j)) >= p
            kept[n, j] = k
            out[n, j] = a[n, j] * (scale if k else zero)


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_mask(out, seed, step0, B, total, off, p, scale):
    """out = the masks themselves (scale where kept, else 0) for rows of H units, indexed as
    dropout_to's: recurrent dropout's, which the cell reads in its forward and its backward."""
    H = out.shape[1]
    zero = scale - scale
    for n in range(out.shape[0]):
        row = _mask_row(n, B, H, step0, total, off)
        for j in range(H):
            out[n, j] = scale if _uniform(seed, row + np.uint64(j)) >= p else zero


@njit(cache=True, nogil=True, error_model="numpy")
def dropout_kept(d, kept, scale):
    """d *= the mask dropout_to applied, from its record `kept` (the gradient's dropout)."""
    zero = scale - scale
    for n in range(d.shape[0]):
        for j in range(d.shape[1]):
            d[n, j] *= scale if kept[n, j] else zero


@njit(cache=True, nogil=True, error_model="numpy")
def matmul(a, b, c, ta, tb, beta):
    """gemm from Python without the GIL (np.dot wants contiguous outputs and keeps BLAS's
    threading): c = op(a) @ op(b) + beta c on views with unit column stride."""
    gemm(a, b, c, ta, tb, beta)


# ---------------------------------------------------------------- GRU and RNN
@njit(inline="always", error_model="numpy")
def _dact(y, kind, one):
    """The activation's derivative from its output y: 1 - y^2 for tanh, (1 - |y|)^2 for
    softsign (cuda_kernels._dact is the device twin). `one` carries y's float type."""
    if kind == TANH:
        return one - y * y
    d = one - abs(y)
    return d * d


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _gru_cells(a, hw, bias, bh, h_prev, kind, hn_out, h_out, v, q, ib):
    """The GRU cell for B sequences (reference.gru_forward's step): a (B,3H) holds the input
    projections without bias and becomes the activations r, z, n; hw (B,3H) is h_prev @ Wh.
    Writes hn_out = hw_n + bh (which r multiplies) and h_out (B,H). v, q, ib (B*3H) are work
    buffers: v's first 2BH floats take exp(-|x|) of r and z, the last BH expm1(-2|x|) of n."""
    B, G = a.shape
    H = G // 3
    f = a.dtype.type
    one, two = f(1.0), f(2.0)
    vs = v[:2 * B * H].reshape(B, 2 * H)
    vt = v[2 * B * H:].reshape(B, H)
    for bi in range(B):
        for j in range(2 * H):
            x = a[bi, j] + bias[j] + hw[bi, j]
            a[bi, j] = x
            vs[bi, j] = -abs(x)
    vexp(vs.reshape(2 * B * H), q, ib)
    for bi in range(B):
        for j in range(2 * H):
            a[bi, j] = _sigmoid_of(a[bi, j], vs[bi, j], one)
        for j in range(H):
            hn = hw[bi, 2 * H + j] + bh[j]
            hn_out[bi, j] = hn
            a[bi, 2 * H + j] = (a[bi, 2 * H + j] + bias[2 * H + j]) + a[bi, j] * hn
        if kind == TANH:
            for j in range(H):
                vt[bi, j] = -two * abs(a[bi, 2 * H + j])
    if kind == TANH:
        vexpm1(vt.reshape(B * H), q, ib)
        for bi in range(B):
            for j in range(H):
                a[bi, 2 * H + j] = _tanh_of(a[bi, 2 * H + j], vt[bi, j], one)
    else:
        for bi in range(B):
            for j in range(H):
                a[bi, 2 * H + j] = _softsign(a[bi, 2 * H + j], one)
    for bi in range(B):
        for j in range(H):
            z = a[bi, H + j]
            h_out[bi, j] = (one - z) * a[bi, 2 * H + j] + z * h_prev[bi, j]


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def gru_forward(gates, bias, bh, Wh, hs, hn, kind):
    """The GRU's time loop, as lstm_forward's: gates (T,B,3H) holds the input projections
    without bias and becomes r, z, n; hs (T+1,B,H) holds the carried state at [0]; fills the
    rest and hn (T,B,H)."""
    T, B, G = gates.shape
    hw = np.empty((B, G), gates.dtype)
    v = np.empty(B * G, gates.dtype)
    q = np.empty(B * G, gates.dtype)
    ib = np.empty(B * G, np.int32)
    for t in range(T):
        _mm(hs[t], Wh, hw, 0.0)
        _gru_cells(gates[t], hw, bias, bh, hs[t], kind, hn[t], hs[t + 1], v, q, ib)


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def gru_backward(dh_out, gates, hn, hs, WhT, kind, dx, dhw, dh, carry):
    """The GRU's backward time loop (reference.gru_backward): dh_out (T,B,H) is the gradient on
    each step's output, gates and hn the forward's, hs (T+1,B,H) its states. Writes dx and dhw
    (T,B,3H), the gradients on the input-side and recurrent-side pre-activations (they differ
    in the n block, which r scales on the recurrent side). dh (B,H) as lstm_backward's."""
    T, B, H = dh_out.shape
    f = dx.dtype.type
    one = f(1.0)
    zdh = np.empty((B, H), dx.dtype)        # dh * z: the direct path to the previous h
    for t in range(T - 1, -1, -1):
        g3, hnt, hp, dho, dxt, dht = gates[t], hn[t], hs[t], dh_out[t], dx[t], dhw[t]
        for bi in range(B):
            for j in range(H):
                r, z, n = g3[bi, j], g3[bi, H + j], g3[bi, 2 * H + j]
                d = dho[bi, j] + dh[bi, j]
                dan = d * (one - z) * _dact(n, kind, one)
                dar = dan * hnt[bi, j] * r * (one - r)
                daz = d * (hp[bi, j] - n) * z * (one - z)
                dxt[bi, j] = dar
                dxt[bi, H + j] = daz
                dxt[bi, 2 * H + j] = dan
                dht[bi, j] = dar
                dht[bi, H + j] = daz
                dht[bi, 2 * H + j] = dan * r
                zdh[bi, j] = d * z
        if t > 0 or carry:
            _mm(dht, WhT, dh, 0.0)
            for bi in range(B):
                for j in range(H):
                    dh[bi, j] += zdh[bi, j]


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _rnn_cells(a, bias, kind, h_out, w, q, ib):
    """The Elman cell for B sequences: a (B,H) holds the pre-activations without bias (and
    gets it); writes h_out = act(a). w (B,H), q, ib (B*H) are work buffers."""
    B, H = a.shape
    f = a.dtype.type
    one, two = f(1.0), f(2.0)
    for bi in range(B):
        for j in range(H):
            a[bi, j] += bias[j]
    if kind == TANH:
        for bi in range(B):
            for j in range(H):
                w[bi, j] = -two * abs(a[bi, j])
        vexpm1(w.reshape(B * H), q, ib)
        for bi in range(B):
            for j in range(H):
                h_out[bi, j] = _tanh_of(a[bi, j], w[bi, j], one)
    else:
        for bi in range(B):
            for j in range(H):
                h_out[bi, j] = _softsign(a[bi, j], one)


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def rnn_forward(pre, bias, Wh, hs, kind):
    """The Elman RNN's time loop: pre (T,B,H) holds the input projections without bias (and
    becomes the pre-activations); hs (T+1,B,H) the carried state at [0]; fills the rest."""
    T, B, H = pre.shape
    w = np.empty((B, H), pre.dtype)
    q = np.empty(B * H, pre.dtype)
    ib = np.empty(B * H, np.int32)
    for t in range(T):
        _mm(hs[t], Wh, pre[t], 1.0)
        _rnn_cells(pre[t], bias, kind, hs[t + 1], w, q, ib)


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def rnn_backward(dh_out, hs, WhT, kind, da, dh, carry):
    """The RNN's backward time loop (reference.rnn_backward): writes da (T,B,H), the gradient
    on the pre-activations, from dh_out (T,B,H) and the states hs (T+1,B,H); dh (B,H) as
    lstm_backward's."""
    T, B, H = dh_out.shape
    one = da.dtype.type(1.0)
    for t in range(T - 1, -1, -1):
        d, y, dho = da[t], hs[t + 1], dh_out[t]
        for bi in range(B):
            for j in range(H):
                d[bi, j] = (dho[bi, j] + dh[bi, j]) * _dact(y[bi, j], kind, one)
        if t > 0 or carry:
            _mm(d, WhT, dh, 0.0)


_threads = os.environ.get("CHARRNN_THREADS", "").strip()
if _threads.isdigit() and int(_threads) > 0:
    set_blas_threads(int(_threads))
