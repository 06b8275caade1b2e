"""The CPU backend's own kernels: the vectorised float32 exp/expm1 and the small-product path."""
import math
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


def test_float32_expm1_and_exp_are_accurate_to_a_few_ulps_and_saturate():
    x = np.concatenate([np.linspace(-30, 30, 20001), np.geomspace(1e-8, 1, 200), -np.geomspace(1e-8, 1, 200)])
    v = x.astype(np.float32)
    _expm1(v)
    want = np.array([math.expm1(t) for t in x.astype(np.float32).astype(np.float64)])
    assert np.max(np.abs(v - want) / np.maximum(np.abs(want), 1e-30)) < 1e-6
    w = x.astype(np.float32)
    _exp(w)
    want = np.exp(x.astype(np.float32).astype(np.float64))
    assert np.max(np.abs(w - want) / want) < 1e-6
    big = np.array([-1e4, -100.0, 100.0, 1e4], np.float32)
    _exp(big)
    assert np.all(np.isfinite(big)) and big[0] < 1e-37 and big[3] > 1e38


def test_small_products_match_blas_with_and_without_accumulation():
    r = np.random.default_rng(0)
    for M in (1, K.SMALL_M, K.SMALL_M + 1):
        a, b = r.normal(size=(M, 7)), r.normal(size=(7, 9))
        c0 = r.normal(size=(M, 9))
        for beta in (0.0, 1.0):
            c = c0.copy()
            _mm(a, b, c, beta)
            np.testing.assert_allclose(c, a @ b + beta * c0, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not K.HAVE_BLAS or platform.machine() != "x86_64", reason="NumPy's OpenBLAS on x86-64")
def test_blas_core_names_the_kernels_that_openblas_coretype_pins():
    code = "from charrnn.backends.cpu_kernels import blas_core; print(blas_core())"
    for core in ("Haswell", "Sandybridge"):
        env = dict(os.environ, OPENBLAS_CORETYPE=core)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == core
