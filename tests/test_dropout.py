"""charrnn/dropout.py: the masks are the ones every earlier version drew (a frozen copy of that
function lives here), the compiled CPU kernel applies exactly them, and no fast path imports the
reference. The CUDA kernel's masks are checked in tests/test_cuda_backend.py."""
import os
import subprocess
import sys

import numpy as np
import pytest

from charrnn import dropout
from charrnn.backends import cpu_kernels as K


# ---------------------------------------------------------------- a frozen copy of the masks as first defined
# (charrnn/reference.py before charrnn/dropout.py existed); checkpoints resume with these masks,
# so this copy is never to be edited along with the module
def _frozen_hash_uniform(seed, index):
    m1, m2, gold = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) * gold + (index.astype(np.uint64) + np.uint64(1)) * gold
        z = (z ^ (z >> np.uint64(30))) * m1
        z = (z ^ (z >> np.uint64(27))) * m2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) * (1.0 / (1 << 24))


def _frozen_masks(seed, shape, p, dtype=np.float32):
    u = _frozen_hash_uniform(seed, np.arange(int(np.prod(shape)), dtype=np.uint64)).reshape(shape)
    return np.where(u >= p, 1.0 / (1.0 - p), 0.0).astype(dtype)


# window seeds as the trainer draws them (below 2^62), plus the edges
SEEDS = [0, 1, 11, 123456789, (1 << 62) - 1, 2**63 + 5, 2**64 - 1]
# (layers, steps, streams, units): one layer, stacks, odd sizes, a training-sized window
SHAPES = [(1, 1, 1, 1), (2, 3, 2, 5), (3, 7, 5, 13), (2, 50, 50, 128)]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_masks_are_bit_identical_to_the_frozen_masks(seed, p):
    for shape in SHAPES:
        for dtype in (np.float32, np.float64):
            got, want = dropout.masks(seed, shape, p, dtype), _frozen_masks(seed, shape, p, dtype)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), (shape, dtype)


def test_uniform_matches_the_frozen_hash_elementwise():
    index = np.concatenate([np.arange(1000, dtype=np.uint64),
                            np.array([2**32 - 1, 2**32, 2**63, 2**64 - 2], dtype=np.uint64)])
    for seed in SEEDS:
        with np.errstate(over="ignore"):
            got = dropout.uniform(np.uint64(seed), index)
        assert np.array_equal(got, _frozen_hash_uniform(seed, index))


def test_masks_are_reproducible_and_have_the_right_rate():
    m1 = dropout.masks(3, (2, 10, 4, 50), 0.25)
    m2 = dropout.masks(3, (2, 10, 4, 50), 0.25)
    m3 = dropout.masks(4, (2, 10, 4, 50), 0.25)
    assert np.array_equal(m1, m2) and not np.array_equal(m1, m3)
    assert abs((m1 == 0).mean() - 0.25) < 0.03
    assert np.allclose(m1[m1 > 0], 1 / 0.75)


# ---------------------------------------------------------------- the CPU kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", [0, 7, (1 << 62) - 1])
def test_cpu_kernels_apply_the_frozen_masks_to_any_block_of_steps(dtype, seed):
    L, T, B, H, p = 3, 6, 4, 5, 0.3
    want_masks = _frozen_masks(seed, (L, T, B, H), p, dtype)
    rng = np.random.default_rng(seed % 1000)
    scale = dtype(1.0 / (1.0 - p))
    for l in range(L):
        for t0, t1 in [(0, T), (0, 2), (2, 5), (5, 6)]:
            src = rng.standard_normal(((t1 - t0) * B, H)).astype(dtype)
            mask = want_masks[l, t0:t1].reshape(-1, H)
            out, kept = np.full_like(src, np.nan), np.zeros(src.shape, np.bool_)
            K.dropout_to(src, out, kept, np.uint64(seed), np.uint64((l * T + t0) * B * H), p, scale)
            assert out.tobytes() == (src * mask).tobytes(), (l, t0, t1)
            assert np.array_equal(kept, mask > 0)
            grad = rng.standard_normal(src.shape).astype(dtype)
            want_grad = grad * mask
            K.dropout_kept(grad, kept, scale)              # the backward's masks, from the record
            assert grad.tobytes() == want_grad.tobytes()
            K.dropout_to(src, src, kept, np.uint64(seed), np.uint64((l * T + t0) * B * H), p, scale)   # in place
            assert src.tobytes() == out.tobytes()


def test_cpu_kernel_works_on_row_views_with_a_column_stride():
    # the lanes apply it to row blocks of a (T*B, H) buffer and to (T, B, H) slices reshaped
    src = np.arange(24, dtype=np.float32).reshape(4, 6)[1:3]
    out, kept = np.zeros((2, 6), np.float32), np.zeros((3, 6), np.bool_)[1:]
    K.dropout_to(src, out, kept, np.uint64(5), np.uint64(6), 0.5, np.float32(2.0))
    m = _frozen_masks(5, (1, 1, 3, 6), 0.5).reshape(3, 6)[1:3]
    assert np.array_equal(out, src * m) and np.array_equal(kept, m > 0)


# ---------------------------------------------------------------- layering
def test_fast_paths_do_not_import_the_reference():
    code = ("import sys; import charrnn.backends.cpu, charrnn.backends.cuda, charrnn.train, charrnn.sample; "
            "sys.exit('charrnn.reference' in sys.modules)")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0
