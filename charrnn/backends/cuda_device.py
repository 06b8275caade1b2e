"""What every CUDA kernel module of the GPU backend shares: the codes of the cells and
activations, the launch shapes, the scalar nonlinearities with their derivatives, the dropout
hash as a device function, and the block-wide sum and maximum.

Importing this module imports numba.cuda; set NUMBA_ENABLE_CUDASIM=1 before that to run the
kernels as Python on a machine without a GPU (the launch shapes below shrink for it). Numba's
on-disk cache of a kernel sees changes to the kernel's own file only: after editing a device
function here or in cuda_cells.py, clear the cache (NUMBA_CACHE_DIR) before timing on a GPU.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda
from numba.core import config

from charrnn import dropout as masks

TANH, SOFTSIGN = 0, 1
LSTM, GRU, RNN = 0, 1, 2

F0, F1 = np.float32(0.0), np.float32(1.0)
# numba-cuda's float min() fails to type when compiled for a real device (the simulator hides it)
_SOFT_CAP = np.float32(2.0 ** 60)

# launch shapes; the simulator runs every thread as a Python thread, so it gets small blocks
_SIM = bool(config.ENABLE_CUDASIM)
THREADS = 32 if _SIM else 256      # pointwise kernels: threads per block
RED = 32 if _SIM else 256          # reductions: threads per block (a power of two, >= 32)
NW = RED // 32                     # warps in a reduction block
CS_ROWS = 2 if _SIM else 8         # row lanes of the column-sum kernel
NORM_BLOCKS = 4 if _SIM else 128   # blocks of the first pass of the squared-norm reduction


def blocks(n: int, threads: int = THREADS) -> int:
    return max(1, (n + threads - 1) // threads)


# ---------------------------------------------------------------- scalar helpers
# The kernels that evaluate these are compiled without fastmath: with it, math.tanh becomes
# tanh.approx.f32 (about 5e-4 off on compute capability 7.5+), divisions approximate and
# subnormals flush to zero. Without it they are libdevice's, within 2 ulps (CUDA's math API
# bounds), and the forms below never overflow: the same whole-range forms as the CPU kernels.
@cuda.jit(device=True, inline=True)
def sig(a):
    e = math.exp(-abs(a))
    return (F1 if a >= F0 else e) / (F1 + e)


@cuda.jit(device=True, inline=True)
def act(a, kind):
    if kind == TANH:
        return math.tanh(a)
    m = abs(a)
    m = m if m < _SOFT_CAP else _SOFT_CAP     # past 2^60 softsign rounds to +-1 (no min(): see below)
    y = m / (F1 + m)
    return y if a >= F0 else -y


@cuda.jit(device=True, inline=True, fastmath=True)
def dact(y, kind):
    if kind == TANH:
        return F1 - y * y
    d = F1 - abs(y)
    return d * d


# the mask hash of charrnn/dropout.py, compiled from its source (the CPU kernels compile the same)
hash_uniform = cuda.jit(device=True, inline=True)(masks.uniform)


@cuda.jit(device=True, inline=True)
def block_sum(red, t):
    """Sum red[0:RED] over the block (every thread calls this, having written red[t]); returns it."""
    cuda.syncthreads()
    s = RED // 2
    while s > 0:
        if t < s:
            red[t] += red[t + s]
        cuda.syncthreads()
        s //= 2
    r = red[0]
    cuda.syncthreads()                 # everyone has read red[0]: the caller may reuse red
    return r


@cuda.jit(device=True, inline=True)
def block_max(red, t):
    """As block_sum, for the maximum (builtin max is avoided: comparisons type the same everywhere)."""
    cuda.syncthreads()
    s = RED // 2
    while s > 0:
        if t < s:
            if red[t + s] > red[t]:
                red[t] = red[t + s]
        cuda.syncthreads()
        s //= 2
    r = red[0]
    cuda.syncthreads()
    return r
