"""Dropout masks from a counter-based hash, one definition for every backend.

A window's masks are a function of (seed, index) alone, index the flat position in the
(L, T, B, H) mask array: ((l * T + t) * B + b) * H + j, with b the stream's number in the
global batch (a data-parallel rank holds streams off.. of a batch of `total`, and draws the
masks one process running all `total` streams would). Nothing is stored or drawn in order,
so the reference builds the whole array in NumPy, the CPU kernels and the CUDA kernels compute
each element where they use it, and all three agree bit for bit: a resumed run, the CPU and the
GPU see the same masks for the same seed.

`uniform` is plain arithmetic on uint64 and float64, written to run unchanged as NumPy
(arrays or scalars), inside @njit kernels (cpu_kernels compiles it with njit) and as a
numba.cuda device function (cuda_device.py compiles it with cuda.jit(device=True)); an element
is kept where uniform >= p. Callers pass the seed and the index as uint64: mixing int64 into
the products would turn them to float under Numba's typing rules. Numba's on-disk cache keys a
kernel on its own file only, so a change here would need the cache cleared; but the masks are
part of what a checkpoint resumes, and do not change.
"""
from __future__ import annotations

import numpy as np

# splitmix64 (Steele, Lea and Flood's SplittableRandom finaliser): the golden-ratio increment
# and the two mixing multipliers
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
GOLD = np.uint64(0x9E3779B97F4A7C15)
U1, S27, S30, S31, S40 = np.uint64(1), np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(40)
INV24 = 1.0 / (1 << 24)
# recurrent dropout's masks hash the window's seed xor this, so they are independent of the
# output dropout's masks for the same indices
RECURRENT_SALT = 0xD1B54A32D192ED03
# and zoneout's, on c and on h, each its own
ZONEOUT_SALTS = (0x2545F4914F6CDD1D, 0x9FB21C651E98DF25)


def uniform(seed, index):
    """Uniform in [0, 1) on a 2^-24 grid for element `index` (uint64) of the masks of `seed`
    (uint64): splitmix64 of seed * GOLD + (index + 1) * GOLD, its top 24 bits."""
    z = seed * GOLD + (index + U1) * GOLD
    z = (z ^ (z >> S30)) * M1
    z = (z ^ (z >> S27)) * M2
    z = z ^ (z >> S31)
    return (z >> S40) * INV24


def masks(seed: int, shape: tuple[int, int, int, int], p: float, dtype=np.float32,
          streams: tuple[int, int] | None = None) -> np.ndarray:
    """Inverted-dropout masks of `shape` (L, T, B, H): 0 with probability p, else 1/(1-p).
    `streams` = (off, total): these B streams are streams off.. of a batch of `total`."""
    return np.where(_uniforms(seed, shape, streams) >= p, 1.0 / (1.0 - p), 0.0).astype(dtype)


def zoneout_masks(seed: int, shape: tuple[int, int, int, int], rates: tuple[float, float], dtype=np.float32,
                  streams: tuple[int, int] | None = None) -> np.ndarray:
    """Zoneout's keep masks for a window of dropout seed `seed`: (L, 2, T, B, H) for `shape`
    (L, T, B, H), [:, 0] on c and [:, 1] on h (reference.forward's zmasks), each under its own
    zoneout_seed; 1 with probability rates[0] (rates[1]), where the unit keeps its previous value,
    else 0. The CPU kernels draw the same with cpu_kernels.dropout_mask at p = 1 - rate, scale 1."""
    return np.stack([np.where(_uniforms(zoneout_seed(seed, i), shape, streams) >= 1.0 - z, 1.0, 0.0).astype(dtype)
                     for i, z in enumerate(rates)], axis=1)


def _uniforms(seed: int, shape: tuple[int, int, int, int], streams: tuple[int, int] | None) -> np.ndarray:
    L, T, B, H = shape
    off, total = streams or (0, B)
    index = ((np.arange(L * T, dtype=np.uint64)[:, None, None] * np.uint64(total)
              + np.uint64(off) + np.arange(B, dtype=np.uint64)[None, :, None]) * np.uint64(H)
             + np.arange(H, dtype=np.uint64)[None, None, :])
    with np.errstate(over="ignore"):              # the hash relies on uint64 wrap-around
        return uniform(np.uint64(seed), index.reshape(-1)).reshape(shape)


def recurrent_seed(seed: int) -> int:
    """The seed of a window's recurrent dropout masks, from the window's dropout seed."""
    return (int(seed) ^ RECURRENT_SALT) & 0xFFFFFFFFFFFFFFFF


def zoneout_seed(seed: int, which: int) -> int:
    """The seed of a window's zoneout masks on c (which 0) or h (1), from its dropout seed."""
    return (int(seed) ^ ZONEOUT_SALTS[which]) & 0xFFFFFFFFFFFFFFFF
