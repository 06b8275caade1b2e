"""cpu_tiles: the register tiles of the batched exact product give every row mm_exact's bits."""
from __future__ import annotations

import numpy as np
import pytest

from charrnn.backends import cpu_kernels as K
from charrnn.backends import cpu_tiles as T


def _exact(a, b, c):
    out = c.copy()
    K.mm_exact(np.ascontiguousarray(a), np.ascontiguousarray(b), out, 1.0)
    return out


def test_tiles_of_5_to_37_rows_give_mm_exacts_bits_on_the_columns_they_cover(dtype=np.float32):
    """Every row count the tiles take (tiles of 4..8 rows of even size), column counts with
    panels of two vectors and a single vector or a partial one after them, k with and without a
    remainder of four: the covered columns bit for bit as mm_exact, the rest untouched. (float64
    tiles: tests/test_cpu_kernels.py's batched test goes through them; float32 only here keeps
    the compile short.)"""
    r = np.random.default_rng(7)
    W = T.VEC_BYTES // np.dtype(dtype).itemsize
    for Kd, N in ((37, 4 * W + W + 5), (6, 2 * W), (1, W + 1), (40, 3 * W - 3)):
        a = r.normal(size=(37, Kd)).astype(dtype)
        b = r.normal(size=(Kd, N)).astype(dtype)
        c0 = r.normal(size=(37, N)).astype(dtype)
        want = _exact(a, b, c0)
        for M in range(T.TILE_MIN_ROWS, 38):
            got = c0[:M].copy()
            done = T.mm_exact_tiled(a[:M], b, got)
            assert done == N - N % (2 * W), (Kd, N, M)
            assert np.array_equal(got[:, :done], want[:M, :done]), (Kd, N, M)
            assert np.array_equal(got[:, done:], c0[:M, done:]), (Kd, N, M)


def test_tiles_follow_row_strides_of_views_into_wider_arrays():
    """a, b and c as column windows of wider arrays: each row's start is found by its stride."""
    r = np.random.default_rng(8)
    W = T.VEC_BYTES // 4
    big_a = r.normal(size=(9, 50)).astype(np.float32)
    big_b = r.normal(size=(45, 4 * W + 7)).astype(np.float32)
    big_c = r.normal(size=(9, 4 * W + 9)).astype(np.float32)
    a, b, c = big_a[:, 3:48], big_b[:, 7:], big_c[:, 2:2 + 4 * W]
    want, before = _exact(a, b, c), big_c.copy()
    assert T.mm_exact_tiled(a, b, c) == 4 * W
    assert np.array_equal(big_c[:, 2:2 + 4 * W], want)
    assert np.array_equal(big_c[:, :2], before[:, :2]) and np.array_equal(big_c[:, 2 + 4 * W:], before[:, 2 + 4 * W:])


def test_tiles_refuse_too_few_rows_and_strided_columns():
    a = np.ones((T.TILE_MIN_ROWS - 1, 8), np.float32)
    b = np.ones((8, 64), np.float32)
    with pytest.raises(ValueError):
        T.mm_exact_tiled(a, b, np.zeros((a.shape[0], 64), np.float32))
    a = np.ones((T.TILE_MIN_ROWS, 8), np.float32)
    with pytest.raises(ValueError):
        T.mm_exact_tiled(a, np.ones((8, 128), np.float32)[:, ::2], np.zeros((a.shape[0], 64), np.float32))
