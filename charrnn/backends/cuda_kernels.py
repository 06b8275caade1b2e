"""The numba.cuda kernels of the GPU backend, each one job, sizes taken from their arguments.

Groups: a tiled shared-memory matrix product (one factory, a few tile shapes); the one-hot row
gather and row scatter-add; fused pointwise gate kernels per cell, forward and backward, one
time step each (the recurrent product is a separate GEMM, as in the CPU backend); dropout from
the counter-based hash of charrnn/dropout.py; fused softmax with cross-entropy; column sums;
the optimizer rules and the global-norm reduction on the flat buffer; and the sampling kernels
(one fused matrix-vector-plus-gates kernel per layer, one output kernel that scores, filters
and draws). Gate order and cell equations are reference.py's.

Importing this module imports numba.cuda; set NUMBA_ENABLE_CUDASIM=1 before that to run the
kernels as Python on a machine without a GPU. Module-level kernels are cached on disk (compiling
them all takes a while); the tile factories' kernels and the grid-synced sampling loop are not.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from numba import cuda, float32, float64, int64, uint64
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
if _SIM:   # the simulator runs the hash on NumPy scalars, which warn on the wrap-around it relies on
    warnings.filterwarnings("ignore", r"overflow encountered in scalar", RuntimeWarning, masks.__name__)


def blocks(n: int, threads: int = THREADS) -> int:
    return max(1, (n + threads - 1) // threads)


# ---------------------------------------------------------------- scalar helpers
# The kernels that evaluate these are compiled without fastmath: with it, math.tanh becomes
# tanh.approx.f32 (about 5e-4 off on compute capability 7.5+), divisions approximate and
# subnormals flush to zero. Without it they are libdevice's, within 2 ulps (CUDA's math API
# bounds), and the forms below never overflow: the same whole-range forms as the CPU kernels.
@cuda.jit(device=True, inline=True)
def _sig(a):
    e = math.exp(-abs(a))
    return (F1 if a >= F0 else e) / (F1 + e)


@cuda.jit(device=True, inline=True)
def _act(a, kind):
    if kind == TANH:
        return math.tanh(a)
    m = abs(a)
    m = m if m < _SOFT_CAP else _SOFT_CAP     # past 2^60 softsign rounds to +-1 (no min(): see below)
    y = m / (F1 + m)
    return y if a >= F0 else -y


@cuda.jit(device=True, inline=True, fastmath=True)
def _dact(y, kind):
    if kind == TANH:
        return F1 - y * y
    d = F1 - abs(y)
    return d * d


# the mask hash of charrnn/dropout.py, compiled from its source (the CPU kernels compile the same)
hash_uniform = cuda.jit(device=True, inline=True)(masks.uniform)


@cuda.jit(device=True, inline=True)
def _block_sum(red, t):
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
def _block_max(red, t):
    """As _block_sum, for the maximum (builtin max is avoided: comparisons type the same everywhere)."""
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


# ---------------------------------------------------------------- staged operand slices
def make_slice_io(R: int, TK: int, NT: int):
    """Device functions that move an R x TK slice of an operand through registers into shared
    memory, for NT threads: fetch reads X[r0:r0+R, k0:k0+TK] (X stored (K, R) when kfirst, so
    the reads run along r; zero outside Rmax x Kd) into NR registers a thread; stage writes them
    to sh (TK, >= R), k-major. Fetching the next slice before multiplying the current one
    overlaps global-memory latency with arithmetic (software pipelining).
    Returns (fetch, stage, NR)."""
    NR = (R * TK + NT - 1) // NT

    @cuda.jit(device=True, inline=True)
    def fetch(X, kfirst, r0, k0, Rmax, Kd, tid, reg):
        for i in range(NR):
            e = tid + i * NT
            if kfirst:
                rr = e % R
                kk = e // R
            else:
                kk = e % TK
                rr = e // TK
            v = F0
            if e < R * TK and r0 + rr < Rmax and k0 + kk < Kd:
                v = X[k0 + kk, r0 + rr] if kfirst else X[r0 + rr, k0 + kk]
            reg[i] = v

    @cuda.jit(device=True, inline=True)
    def stage(sh, kfirst, tid, reg):
        for i in range(NR):
            e = tid + i * NT
            if e < R * TK:
                if kfirst:
                    sh[e // R, e % R] = reg[i]
                else:
                    sh[e % TK, e // TK] = reg[i]

    return fetch, stage, NR


# ---------------------------------------------------------------- matrix product
def make_gemm(TM: int, TN: int, TK: int, RM: int, RN: int):
    """C = beta*C + op(A) @ op(B) (+ bias): a TM x TN tile per block, RM x RN outputs per thread,
    TK-deep slices of A and B staged in shared memory. op transposes when ta / tb is set, so
    the weight-gradient products (A^T B) and the backward input products (A B^T) need no copies.
    Returns (kernel, tile (TM, TN), block (TN//RN, TM//RM)); launch on grid (ceil(N/TN), ceil(M/TM))."""
    NTX, NTY = TN // RN, TM // RM
    NT = NTX * NTY
    TMP, TNP = TM + 1, TN + 1        # one pad column against shared-memory bank conflicts

    fetch_a, stage_a, NA = make_slice_io(TM, TK, NT)
    fetch_b, stage_b, NB = make_slice_io(TN, TK, NT)

    @cuda.jit(fastmath=True)
    def gemm(A, B, C, ta, tb, beta, bias, has_bias):
        M = C.shape[0]
        N = C.shape[1]
        K = A.shape[0] if ta else A.shape[1]
        As = cuda.shared.array((TK, TMP), float32)
        Bs = cuda.shared.array((TK, TNP), float32)
        acc = cuda.local.array((RM, RN), float32)
        ar = cuda.local.array(RM, float32)
        br = cuda.local.array(RN, float32)
        areg = cuda.local.array(NA, float32)
        breg = cuda.local.array(NB, float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * NTX + tx
        m0 = cuda.blockIdx.y * TM
        n0 = cuda.blockIdx.x * TN
        bk = 1 - tb                          # B read as rows n: stored (K, N) unless tb
        for i in range(RM):
            for j in range(RN):
                acc[i, j] = F0
        fetch_a(A, ta, m0, 0, M, K, tid, areg)
        fetch_b(B, bk, n0, 0, N, K, tid, breg)
        for k0 in range(0, K, TK):
            stage_a(As, ta, tid, areg)
            stage_b(Bs, bk, tid, breg)
            cuda.syncthreads()
            if k0 + TK < K:
                fetch_a(A, ta, m0, k0 + TK, M, K, tid, areg)
                fetch_b(B, bk, n0, k0 + TK, N, K, tid, breg)
            for kk in range(TK):
                for i in range(RM):
                    ar[i] = As[kk, ty + i * NTY]
                for j in range(RN):
                    br[j] = Bs[kk, tx + j * NTX]
                for i in range(RM):
                    for j in range(RN):
                        acc[i, j] += ar[i] * br[j]
            cuda.syncthreads()
        for i in range(RM):
            gm = m0 + ty + i * NTY
            if gm < M:
                for j in range(RN):
                    gn = n0 + tx + j * NTX
                    if gn < N:
                        v = acc[i, j]
                        if beta != F0:
                            v += beta * C[gm, gn]
                        if has_bias:
                            v += bias[gn]
                        C[gm, gn] = v

    return gemm, (TM, TN), (NTX, NTY)


# ---------------------------------------------------------------- input side
@cuda.jit(cache=True)
def gather_rows(W, b, codes, out):
    """out[n] = W[codes[n]] + b: the one-hot input product as a row gather."""
    i = cuda.grid(1)
    C = out.shape[1]
    if i < out.shape[0] * C:
        n = i // C
        j = i - n * C
        out[n, j] = W[codes[n], j] + b[j]


@cuda.jit(cache=True)
def scatter_add_rows(G, codes, d):
    """G[codes[n]] += d[n] (atomics: several n may hit one row)."""
    i = cuda.grid(1)
    C = d.shape[1]
    if i < d.shape[0] * C:
        n = i // C
        j = i - n * C
        cuda.atomic.add(G, (codes[n], j), d[n, j])


@cuda.jit(cache=True)
def colsum_add(g, d):
    """g[j] += sum_n d[n, j]. Block (32, CS_ROWS): 32 columns, CS_ROWS row lanes, then a shared sum."""
    part = cuda.shared.array((CS_ROWS, 32), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    j = cuda.blockIdx.x * 32 + tx
    s = F0
    if j < d.shape[1]:
        for n in range(ty, d.shape[0], CS_ROWS):
            s += d[n, j]
    part[ty, tx] = s
    cuda.syncthreads()
    if ty == 0 and j < d.shape[1]:
        t = F0
        for r in range(CS_ROWS):
            t += part[r, tx]
        g[j] += t


@cuda.jit(cache=True)
def fill(a, v):
    i = cuda.grid(1)
    if i < a.shape[0]:
        a[i] = v


@cuda.jit(cache=True)
def copy(dst, src):
    i = cuda.grid(1)
    if i < dst.shape[0]:
        dst[i] = src[i]


@cuda.jit(cache=True)
def dropout(src, dst, seed, base, p, scale, row, stride, off):
    """dst[i] = src[i] * mask, mask from hash_uniform(seed, index): 0 below p, else scale.
    The same call on a gradient applies the same mask (the mask is never stored). Element i of
    a (T, B*H) block sits at index base + t * stride + off + j (t, j = divmod(i, row)): a rank's
    share of the streams draws the masks of the global batch (charrnn/dropout.py)."""
    i = cuda.grid(1)
    if i < dst.shape[0]:
        j = uint64(i)              # all-unsigned arithmetic: int64 with uint64 would go through float64
        u = hash_uniform(seed, base + (j // row) * stride + off + j % row)
        dst[i] = src[i] * scale if u >= p else F0


# ---------------------------------------------------------------- LSTM
@cuda.jit(cache=True)
def lstm_fwd(xw, hw, c_prev, kind, gates, c, tc, h):
    n = cuda.grid(1)
    B, H = c.shape[0], c.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        i = _sig(xw[bi, j] + hw[bi, j])
        f = _sig(xw[bi, H + j] + hw[bi, H + j])
        g = _act(xw[bi, 2 * H + j] + hw[bi, 2 * H + j], kind)
        o = _sig(xw[bi, 3 * H + j] + hw[bi, 3 * H + j])
        cc = f * c_prev[bi, j] + i * g
        t = _act(cc, kind)
        gates[bi, j] = i
        gates[bi, H + j] = f
        gates[bi, 2 * H + j] = g
        gates[bi, 3 * H + j] = o
        c[bi, j] = cc
        tc[bi, j] = t
        h[bi, j] = o * t


@cuda.jit(fastmath=True, cache=True)
def lstm_bwd(dh_out, dh_next, dc_next, gates, c_prev, tc, kind, da):
    """dh_next in, dc_next in/out; writes da (B, 4H). dh_next = da @ Wh.T follows as a GEMM."""
    n = cuda.grid(1)
    B, H = tc.shape[0], tc.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        i = gates[bi, j]
        f = gates[bi, H + j]
        g = gates[bi, 2 * H + j]
        o = gates[bi, 3 * H + j]
        dh = dh_out[bi, j] + dh_next[bi, j]
        dc = dc_next[bi, j] + dh * o * _dact(tc[bi, j], kind)
        da[bi, j] = dc * g * i * (F1 - i)
        da[bi, H + j] = dc * c_prev[bi, j] * f * (F1 - f)
        da[bi, 2 * H + j] = dc * i * _dact(g, kind)
        da[bi, 3 * H + j] = dh * tc[bi, j] * o * (F1 - o)
        dc_next[bi, j] = dc * f


# ---------------------------------------------------------------- GRU
@cuda.jit(cache=True)
def gru_fwd(xw, hw, bh, h_prev, kind, gates, hn, h):
    n = cuda.grid(1)
    B, H = h.shape[0], h.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        r = _sig(xw[bi, j] + hw[bi, j])
        z = _sig(xw[bi, H + j] + hw[bi, H + j])
        q = hw[bi, 2 * H + j] + bh[j]
        nn = _act(xw[bi, 2 * H + j] + r * q, kind)
        gates[bi, j] = r
        gates[bi, H + j] = z
        gates[bi, 2 * H + j] = nn
        hn[bi, j] = q
        h[bi, j] = (F1 - z) * nn + z * h_prev[bi, j]


@cuda.jit(fastmath=True, cache=True)
def gru_bwd(dh_out, dh_next, gates, hn, h_prev, kind, dxw, dhw):
    """Reads dh_next, then overwrites it with dh * z (the direct path to h_prev); the GEMM
    that follows adds dhw @ Wh.T into it."""
    n = cuda.grid(1)
    B, H = h_prev.shape[0], h_prev.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        r = gates[bi, j]
        z = gates[bi, H + j]
        nn = gates[bi, 2 * H + j]
        dh = dh_out[bi, j] + dh_next[bi, j]
        dan = dh * (F1 - z) * _dact(nn, kind)
        dar = dan * hn[bi, j] * r * (F1 - r)
        daz = dh * (h_prev[bi, j] - nn) * z * (F1 - z)
        dxw[bi, j] = dar
        dxw[bi, H + j] = daz
        dxw[bi, 2 * H + j] = dan
        dhw[bi, j] = dar
        dhw[bi, H + j] = daz
        dhw[bi, 2 * H + j] = dan * r
        dh_next[bi, j] = dh * z


# ---------------------------------------------------------------- RNN
@cuda.jit(cache=True)
def rnn_fwd(xw, hw, kind, h):
    n = cuda.grid(1)
    B, H = h.shape[0], h.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        h[bi, j] = _act(xw[bi, j] + hw[bi, j], kind)


@cuda.jit(fastmath=True, cache=True)
def rnn_bwd(dh_out, dh_next, h, kind, da):
    n = cuda.grid(1)
    B, H = h.shape[0], h.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        da[bi, j] = (dh_out[bi, j] + dh_next[bi, j]) * _dact(h[bi, j], kind)


# ---------------------------------------------------------------- output layer
@cuda.jit(cache=True)
def softmax_xent(logits, y, scale, want_grad, losses):
    """One block per row: losses[n] = logsumexp(logits[n]) - logits[n, y[n]] (float64, as the CPU);
    with want_grad, logits[n] becomes scale * (softmax - onehot(y))."""
    red = cuda.shared.array(RED, float64)
    n = cuda.blockIdx.x
    t = cuda.threadIdx.x
    V = logits.shape[1]
    m = -math.inf
    for k in range(t, V, RED):
        v = float64(logits[n, k])
        if v > m:
            m = v
    red[t] = m
    m = _block_max(red, t)
    acc = 0.0
    for k in range(t, V, RED):
        acc += math.exp(float64(logits[n, k]) - m)
    red[t] = acc
    total = _block_sum(red, t)
    lse = m + math.log(total)
    yn = y[n]
    if t == 0:
        losses[n] = lse - float64(logits[n, yn])
    cuda.syncthreads()                 # the loss has read its logit before the gradient overwrites it
    if want_grad:
        for k in range(t, V, RED):
            p = math.exp(float64(logits[n, k]) - lse) * scale
            if k == yn:
                p -= scale
            logits[n, k] = p


@cuda.jit(cache=True)
def sum_into(x, out):
    """out[0] = sum(x) in float64 by one block, in a fixed order (deterministic)."""
    red = cuda.shared.array(RED, float64)
    t = cuda.threadIdx.x
    acc = 0.0
    for k in range(t, x.shape[0], RED):
        acc += x[k]
    red[t] = acc
    total = _block_sum(red, t)
    if t == 0:
        out[0] = total


# ---------------------------------------------------------------- optimizers (optim.py's rules)
@cuda.jit(cache=True)
def penalties(w, g, l2, l1):
    k = cuda.grid(1)
    if k < w.shape[0]:
        sgn = 1.0 if w[k] > 0 else (-1.0 if w[k] < 0 else 0.0)
        g[k] += l2 * w[k] + l1 * sgn


@cuda.jit(cache=True)
def adam(w, g, m, v, lr, b1, b2, eps, c1, c2):
    k = cuda.grid(1)
    if k < w.shape[0]:
        m[k] = b1 * m[k] + (1.0 - b1) * g[k]
        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k]
        w[k] -= lr * (m[k] / c1) / (math.sqrt(v[k] / c2) + eps)


@cuda.jit(cache=True)
def adamw(w, g, m, v, lr, b1, b2, eps, c1, c2, wd):
    k = cuda.grid(1)
    if k < w.shape[0]:
        w[k] -= lr * wd * w[k]
        m[k] = b1 * m[k] + (1.0 - b1) * g[k]
        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k]
        w[k] -= lr * (m[k] / c1) / (math.sqrt(v[k] / c2) + eps)


@cuda.jit(cache=True)
def rmsprop(w, g, sq, lr, alpha, eps):
    k = cuda.grid(1)
    if k < w.shape[0]:
        sq[k] = alpha * sq[k] + (1.0 - alpha) * g[k] * g[k]
        w[k] -= lr * g[k] / (math.sqrt(sq[k]) + eps)


@cuda.jit(cache=True)
def adagrad(w, g, s, lr, eps):
    k = cuda.grid(1)
    if k < w.shape[0]:
        s[k] += g[k] * g[k]
        w[k] -= lr * g[k] / (math.sqrt(s[k]) + eps)


@cuda.jit(cache=True)
def adadelta(w, g, sq, delta, lr, rho, eps):
    k = cuda.grid(1)
    if k < w.shape[0]:
        sq[k] = rho * sq[k] + (1.0 - rho) * g[k] * g[k]
        d = math.sqrt(delta[k] + eps) / math.sqrt(sq[k] + eps) * g[k]
        delta[k] = rho * delta[k] + (1.0 - rho) * d * d
        w[k] -= lr * d


@cuda.jit(cache=True)
def sgd(w, g, vel, lr, mu):
    k = cuda.grid(1)
    if k < w.shape[0]:
        vel[k] = mu * vel[k] + g[k]
        w[k] -= lr * vel[k]


@cuda.jit(cache=True)
def nesterov(w, g, vel, lr, mu):
    k = cuda.grid(1)
    if k < w.shape[0]:
        vel[k] = mu * vel[k] + g[k]
        w[k] -= lr * (g[k] + mu * vel[k])


@cuda.jit(cache=True)
def sumsq_partial(g, part):
    """First pass of the global norm: part[block] = sum of g^2 over a grid-strided share, in float64."""
    red = cuda.shared.array(RED, float64)
    t = cuda.threadIdx.x
    acc = 0.0
    for k in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        acc += float64(g[k]) * float64(g[k])
    red[t] = acc
    total = _block_sum(red, t)
    if t == 0:
        part[cuda.blockIdx.x] = total


@cuda.jit(cache=True)
def clip_by_norm(g, sumsq, value):
    """Rescale g to norm <= value when its (finite) norm exceeds it, as optim.clip_."""
    k = cuda.grid(1)
    norm = math.sqrt(sumsq[0])
    if k < g.shape[0] and norm > value and not math.isinf(norm) and not math.isnan(norm):
        g[k] *= float32(value / norm)


@cuda.jit(cache=True)
def clip_by_value(g, value):
    k = cuda.grid(1)
    if k < g.shape[0]:
        v = g[k]
        if v > value:
            v = value
        elif v < -value:
            v = -value
        g[k] = v


# ---------------------------------------------------------------- sampling
@cuda.jit(cache=True)
def sample_layer(WT, b, bh, codes, x, onehot, h_prev, c_prev, cell, kind, h_out, c_out):
    """One step of one layer for every row, fused: input and recurrent matrix-vector products
    and the gates. WT = [Wx; Wh].T (G*H, D+H), so each gate row is one contiguous dot product.
    One block per unit j, one warp per gate (blockDim 32*G); rows of the batch in turn."""
    rx = cuda.shared.array(128, float32)
    rh = cuda.shared.array(128, float32)
    j = cuda.blockIdx.x
    t = cuda.threadIdx.x
    w = t // 32
    lane = t - w * 32
    B, H = h_prev.shape[0], h_prev.shape[1]
    D = WT.shape[1] - H
    row = w * H + j
    for bi in range(B):
        sx = F0
        if onehot:
            if lane == 0:
                sx = WT[row, codes[bi]]
        else:
            for k in range(lane, D, 32):
                sx += WT[row, k] * x[bi, k]
        sh = F0
        for k in range(lane, H, 32):
            sh += WT[row, D + k] * h_prev[bi, k]
        rx[t] = sx
        rh[t] = sh
        cuda.syncthreads()
        s = 16
        while s > 0:
            if lane < s:
                rx[t] += rx[t + s]
                rh[t] += rh[t + s]
            cuda.syncthreads()
            s //= 2
        if t == 0:
            if cell == LSTM:
                i = _sig(rx[0] + b[j] + rh[0])
                f = _sig(rx[32] + b[H + j] + rh[32])
                g = _act(rx[64] + b[2 * H + j] + rh[64], kind)
                o = _sig(rx[96] + b[3 * H + j] + rh[96])
                cc = f * c_prev[bi, j] + i * g
                c_out[bi, j] = cc
                h_out[bi, j] = o * _act(cc, kind)
            elif cell == GRU:
                r = _sig(rx[0] + b[j] + rh[0])
                z = _sig(rx[32] + b[H + j] + rh[32])
                nn = _act(rx[64] + b[2 * H + j] + r * (rh[64] + bh[j]), kind)
                h_out[bi, j] = (F1 - z) * nn + z * h_prev[bi, j]
            else:
                h_out[bi, j] = _act(rx[0] + b[j] + rh[0], kind)
        cuda.syncthreads()


@cuda.jit(device=True)
def _out_row(bi, W, bo, h, logits, probs, temp, top_k, u, step, draw, codes, hist, logp, part, red, idx):
    """Row bi, by the whole block: logits = h W + b; then, when `draw`, the next code as
    sample.distribution + sample.draw would pick it (temperature, top-k, inverse CDF with
    the uniform u[step, row]); it goes to codes[row] and hist[step, row], its log-probability
    under the plain logits to logp[step, row]. Block RED threads: NW warps split the hidden
    sum, the 32 lanes take consecutive vocabulary entries (coalesced reads of W)."""
    t = cuda.threadIdx.x
    w = t // 32
    lane = t - w * 32
    H, V = W.shape[0], W.shape[1]
    for v0 in range(0, V, 32):
        v = v0 + lane
        s = F0
        if v < V:
            for k in range(w, H, NW):
                s += h[bi, k] * W[k, v]
        part[w, lane] = s
        cuda.syncthreads()
        if w == 0 and v < V:
            acc = F0
            for r in range(NW):
                acc += part[r, lane]
            logits[bi, v] = acc + bo[v]
        cuda.syncthreads()
    if not draw:
        return
    # log-normaliser of the plain logits, for logp
    m = -math.inf
    for k in range(t, V, RED):
        v = float64(logits[bi, k])
        if v > m:
            m = v
    red[t] = m
    mx = _block_max(red, t)
    acc2 = 0.0
    for k in range(t, V, RED):
        acc2 += math.exp(float64(logits[bi, k]) - mx)
    red[t] = acc2
    lognorm = mx + math.log(_block_sum(red, t))
    if temp == 0.0:
        # argmax, the first index on ties (as np.argmax)
        best = -math.inf
        bidx = V
        for k in range(t, V, RED):
            z = float64(logits[bi, k])
            if z > best:
                best = z
                bidx = k
        red[t] = best
        idx[t] = bidx
        cuda.syncthreads()
        s2 = RED // 2
        while s2 > 0:
            if t < s2:
                if red[t + s2] > red[t] or (red[t + s2] == red[t] and idx[t + s2] < idx[t]):
                    red[t] = red[t + s2]
                    idx[t] = idx[t + s2]
            cuda.syncthreads()
            s2 //= 2
        code = idx[0]
    else:
        kmax = -math.inf
        for k in range(t, V, RED):
            z = float64(logits[bi, k]) / temp
            keep = True
            if top_k > 0 and top_k < V:
                above = 0
                for q in range(V):
                    if float64(logits[bi, q]) / temp > z:
                        above += 1
                keep = above < top_k
            probs[bi, k] = z if keep else -math.inf
            if keep:
                if z > kmax:
                    kmax = z
        red[t] = kmax
        kmax = _block_max(red, t)
        acc3 = 0.0
        for k in range(t, V, RED):
            e = math.exp(probs[bi, k] - kmax)
            probs[bi, k] = e
            acc3 += e
        red[t] = acc3
        total = _block_sum(red, t)
        code = 0
        if t == 0:
            # inverse CDF over the normalised probabilities, sequential as np.cumsum
            c = 0.0
            for k in range(V):
                c += probs[bi, k] / total
            target = u[step, bi] * c
            c = 0.0
            for k in range(V):
                c += probs[bi, k] / total
                if c < target:
                    code += 1
            if code > V - 1:
                code = V - 1
    if t == 0:
        codes[bi] = code
        hist[step, bi] = code
        logp[step, bi] = float64(logits[bi, code]) - lognorm




@cuda.jit(cache=True)
def sample_out(W, bo, h, logits, probs, temp, top_k, u, step, draw, codes, hist, logp):
    """_out_row for every row, one block (RED threads) each."""
    part = cuda.shared.array((NW, 32), float32)
    red = cuda.shared.array(RED, float64)
    idx = cuda.shared.array(RED, int64)
    _out_row(cuda.blockIdx.x, W, bo, h, logits, probs, temp, top_k, u, step, draw, codes, hist, logp,
             part, red, idx)


@cuda.jit()
def sample_loop(cell, kind, L, steps, WT, wofs, win, w, bofs, bhofs, S, src0, W, bo, logits, probs, temp, top_k,
                u, codes, hist, logp):
    """`steps` whole sampling steps in one cooperative launch: every layer, then the output and
    the draw, with grid-wide barriers between them, so the host launches once per chunk of
    characters instead of L + 1 times per character.
    WT holds each layer's [Wx; Wh].T (G*H, win[l] + H) flat from wofs[l] (layer 0's input is
    the one-hot code: its Wx rows are gathered); biases sit in the flat parameters w at bofs[l]
    (and the GRU's bh at bhofs[l]). S (2, L, S, B, H) is the state, read from S[src] and written
    to S[1 - src], alternating each step, starting from src0. Blocks take (unit group, row)
    pairs in turn; NW warps share a group's G gate rows (dot products across the lanes)."""
    grid = cuda.cg.this_grid()
    part = cuda.shared.array((32, 33), float32)
    gsum = cuda.shared.array((2, 32), float32)
    pout = cuda.shared.array((NW, 32), float32)
    red = cuda.shared.array(RED, float64)
    idx = cuda.shared.array(RED, int64)
    t = cuda.threadIdx.x
    wp = t // 32
    lane = t - wp * 32
    B, H = S.shape[3], S.shape[4]
    G = 4 if cell == LSTM else (3 if cell == GRU else 1)
    U = NW // G if NW >= G else 1                  # units a block handles at once
    ngroups = (H + U - 1) // U
    for st in range(steps):
        src = (src0 + st) % 2
        dst = 1 - src
        for l in range(L):
            D = win[l]
            base = wofs[l]
            for item in range(cuda.blockIdx.x, ngroups * B, cuda.gridDim.x):
                bi = item // ngroups
                j0 = (item - bi * ngroups) * U
                for q in range(wp, U * G, NW):      # (unit, gate) pairs: dot products by warps
                    j = j0 + q // G
                    g = q - (q // G) * G
                    sx = F0
                    sh = F0
                    if j < H:
                        row = base + (g * H + j) * (D + H)
                        if l == 0:
                            if lane == 0:
                                sx = WT[row + codes[bi]]
                        else:
                            for k in range(lane, D, 32):
                                sx += WT[row + k] * S[dst, l - 1, 0, bi, k]
                        for k in range(lane, H, 32):
                            sh += WT[row + D + k] * S[src, l, 0, bi, k]
                    part[q, lane] = sx
                    part[q + 16, lane] = sh
                cuda.syncthreads()
                if t < U * G:
                    ax = F0
                    ah = F0
                    for r in range(32):
                        ax += part[t, r]
                        ah += part[t + 16, r]
                    gsum[0, t] = ax
                    gsum[1, t] = ah
                cuda.syncthreads()
                if t < U and j0 + t < H:
                    j = j0 + t
                    q0 = t * G
                    bofs_l = bofs[l]
                    if cell == LSTM:
                        i = _sig(gsum[0, q0] + w[bofs_l + j] + gsum[1, q0])
                        f = _sig(gsum[0, q0 + 1] + w[bofs_l + H + j] + gsum[1, q0 + 1])
                        g_ = _act(gsum[0, q0 + 2] + w[bofs_l + 2 * H + j] + gsum[1, q0 + 2], kind)
                        o = _sig(gsum[0, q0 + 3] + w[bofs_l + 3 * H + j] + gsum[1, q0 + 3])
                        cc = f * S[src, l, 1, bi, j] + i * g_
                        S[dst, l, 1, bi, j] = cc
                        S[dst, l, 0, bi, j] = o * _act(cc, kind)
                    elif cell == GRU:
                        r_ = _sig(gsum[0, q0] + w[bofs_l + j] + gsum[1, q0])
                        z = _sig(gsum[0, q0 + 1] + w[bofs_l + H + j] + gsum[1, q0 + 1])
                        nn = _act(gsum[0, q0 + 2] + w[bofs_l + 2 * H + j]
                                  + r_ * (gsum[1, q0 + 2] + w[bhofs[l] + j]), kind)
                        S[dst, l, 0, bi, j] = (F1 - z) * nn + z * S[src, l, 0, bi, j]
                    else:
                        S[dst, l, 0, bi, j] = _act(gsum[0, q0] + w[bofs_l + j] + gsum[1, q0], kind)
                cuda.syncthreads()
            grid.sync()
        for bi in range(cuda.blockIdx.x, B, cuda.gridDim.x):
            _out_row(bi, W, bo, S[dst, L - 1, 0], logits, probs, temp, top_k, u, st, 1, codes, hist, logp,
                     pout, red, idx)
        grid.sync()


# ---------------------------------------------------------------- persistent recurrence
def make_recurrence(TB: int, TJ: int, TK: int):
    """The whole time loop of one layer in one launch (forward, and backward), after Diamos et
    al. 2016, "Persistent RNNs", without keeping the weights on chip: each block owns TB batch
    rows x TJ hidden units (all G gates of them) and walks the steps; a grid-wide barrier
    separates the steps. Each step is the recurrent product for the block's tile, staged
    through shared memory TK deep, fused with the gate math. Needs a cooperative launch
    (numba makes one when a kernel syncs its grid) on at most as many blocks as fit at once;
    blocks take tiles in turn, so any grid size is correct. Block (TJ, TB).
    Returns (forward kernel, backward kernel)."""
    NT = TB * TJ
    TBP, TJP = TB + 1, TJ + 1
    NWF = (4 * TK * TJ + NT - 1) // NT     # registers a thread for the forward's weight slice (<= 4 gate blocks)
    fetch_rows, stage_rows, NH = make_slice_io(TB, TK, NT)    # rows of h (forward) or of dA (backward)
    fetch_wbwd, stage_wbwd, NWB = make_slice_io(TJ, TK, NT)   # rows of Wh, i.e. columns of Wh.T (backward)

    @cuda.jit(device=True, inline=True)
    def fetch_wfwd(Wh, j0, k0, H, G, tid, wreg):
        """Wh[k0:k0+TK, g*H + j0 : g*H + j0+TJ] for the G gate blocks."""
        for i in range(NWF):
            e = tid + i * NT
            g = e // (TK * TJ)
            r = e - g * (TK * TJ)
            kk = r // TJ
            jj = r - kk * TJ
            v = F0
            if g < G and j0 + jj < H and k0 + kk < H:
                v = Wh[k0 + kk, g * H + j0 + jj]
            wreg[i] = v

    @cuda.jit(device=True, inline=True)
    def stage_wfwd(wsh, G, tid, wreg):
        for i in range(NWF):
            e = tid + i * NT
            g = e // (TK * TJ)
            if g < G:
                r = e - g * (TK * TJ)
                kk = r // TJ
                wsh[g, kk, r - kk * TJ] = wreg[i]

    @cuda.jit()
    def rec_fwd(cell, kind, T, xw, Wh, bh, hs, gates, cs, tcs, hn):
        """xw (T*B, G*H) input projections incl. bias; hs, cs (T+1, B, H) with hs[0], cs[0] set;
        writes gates (T, B, G*H) after their nonlinearities, cs, tcs = act(c), hn (GRU's hU_n + bh).
        Arrays a cell does not use may be any 3-d float32 stand-ins."""
        grid = cuda.cg.this_grid()
        hsh = cuda.shared.array((TK, TBP), float32)
        wsh = cuda.shared.array((4, TK, TJ), float32)
        acc = cuda.local.array(4, float32)
        hreg = cuda.local.array(NH, float32)
        wreg = cuda.local.array(NWF, float32)
        B, H = hs.shape[1], hs.shape[2]
        G = 4 if cell == LSTM else (3 if cell == GRU else 1)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TJ + tx
        ntj = (H + TJ - 1) // TJ
        ntiles = ((B + TB - 1) // TB) * ntj
        for t in range(T):
            for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
                b0 = (tile // ntj) * TB
                j0 = (tile % ntj) * TJ
                for g in range(4):
                    acc[g] = F0
                fetch_rows(hs[t], 0, b0, 0, B, H, tid, hreg)
                fetch_wfwd(Wh, j0, 0, H, G, tid, wreg)
                for k0 in range(0, H, TK):
                    stage_rows(hsh, 0, tid, hreg)
                    stage_wfwd(wsh, G, tid, wreg)
                    cuda.syncthreads()
                    if k0 + TK < H:
                        fetch_rows(hs[t], 0, b0, k0 + TK, B, H, tid, hreg)
                        fetch_wfwd(Wh, j0, k0 + TK, H, G, tid, wreg)
                    for kk in range(TK):
                        hv = hsh[kk, ty]
                        for g in range(4):
                            if g < G:
                                acc[g] += hv * wsh[g, kk, tx]
                    cuda.syncthreads()
                bi = b0 + ty
                j = j0 + tx
                if bi < B and j < H:
                    row = t * B + bi
                    if cell == LSTM:
                        i = _sig(xw[row, j] + acc[0])
                        f = _sig(xw[row, H + j] + acc[1])
                        g_ = _act(xw[row, 2 * H + j] + acc[2], kind)
                        o = _sig(xw[row, 3 * H + j] + acc[3])
                        cc = f * cs[t, bi, j] + i * g_
                        tc = _act(cc, kind)
                        gates[t, bi, j] = i
                        gates[t, bi, H + j] = f
                        gates[t, bi, 2 * H + j] = g_
                        gates[t, bi, 3 * H + j] = o
                        cs[t + 1, bi, j] = cc
                        tcs[t, bi, j] = tc
                        hs[t + 1, bi, j] = o * tc
                    elif cell == GRU:
                        r_ = _sig(xw[row, j] + acc[0])
                        z = _sig(xw[row, H + j] + acc[1])
                        q = acc[2] + bh[j]
                        nn = _act(xw[row, 2 * H + j] + r_ * q, kind)
                        gates[t, bi, j] = r_
                        gates[t, bi, H + j] = z
                        gates[t, bi, 2 * H + j] = nn
                        hn[t, bi, j] = q
                        hs[t + 1, bi, j] = (F1 - z) * nn + z * hs[t, bi, j]
                    else:
                        hs[t + 1, bi, j] = _act(xw[row, j] + acc[0], kind)
            grid.sync()

    @cuda.jit(fastmath=True)
    def rec_bwd(cell, kind, dh_out, Wh, hs, gates, cs, tcs, hn, dxw, dhw, dc, carry):
        """dh_out (T, B, H) gradient on each step's output; writes dxw (and dhw, the gradient on
        hU, for the GRU; it is dxw otherwise) for every step. dc, carry (B, H) are scratch that
        each thread owns for its (row, unit) across the steps."""
        grid = cuda.cg.this_grid()
        dsh = cuda.shared.array((TK, TBP), float32)
        wsh = cuda.shared.array((TK, TJP), float32)
        dreg = cuda.local.array(NH, float32)
        wreg = cuda.local.array(NWB, float32)
        T, B, H = dh_out.shape[0], dh_out.shape[1], dh_out.shape[2]
        GH = Wh.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TJ + tx
        ntj = (H + TJ - 1) // TJ
        ntiles = ((B + TB - 1) // TB) * ntj
        for t in range(T - 1, -1, -1):
            for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
                b0 = (tile // ntj) * TB
                j0 = (tile % ntj) * TJ
                s = F0                                  # (dhw[t+1] @ Wh.T)[b, j]
                if t < T - 1:
                    fetch_rows(dhw[t + 1], 0, b0, 0, B, GH, tid, dreg)
                    fetch_wbwd(Wh, 0, j0, 0, H, GH, tid, wreg)
                    for k0 in range(0, GH, TK):
                        stage_rows(dsh, 0, tid, dreg)
                        stage_wbwd(wsh, 0, tid, wreg)
                        cuda.syncthreads()
                        if k0 + TK < GH:
                            fetch_rows(dhw[t + 1], 0, b0, k0 + TK, B, GH, tid, dreg)
                            fetch_wbwd(Wh, 0, j0, k0 + TK, H, GH, tid, wreg)
                        for kk in range(TK):
                            s += dsh[kk, ty] * wsh[kk, tx]
                        cuda.syncthreads()
                bi = b0 + ty
                j = j0 + tx
                if bi < B and j < H:
                    dh = dh_out[t, bi, j] + s
                    if cell == LSTM:
                        i = gates[t, bi, j]
                        f = gates[t, bi, H + j]
                        g_ = gates[t, bi, 2 * H + j]
                        o = gates[t, bi, 3 * H + j]
                        tc = tcs[t, bi, j]
                        dcn = dc[bi, j] if t < T - 1 else F0
                        dcc = dcn + dh * o * _dact(tc, kind)
                        dxw[t, bi, j] = dcc * g_ * i * (F1 - i)
                        dxw[t, bi, H + j] = dcc * cs[t, bi, j] * f * (F1 - f)
                        dxw[t, bi, 2 * H + j] = dcc * i * _dact(g_, kind)
                        dxw[t, bi, 3 * H + j] = dh * tc * o * (F1 - o)
                        dc[bi, j] = dcc * f
                    elif cell == GRU:
                        if t < T - 1:
                            dh += carry[bi, j]
                        r_ = gates[t, bi, j]
                        z = gates[t, bi, H + j]
                        nn = gates[t, bi, 2 * H + j]
                        dan = dh * (F1 - z) * _dact(nn, kind)
                        dar = dan * hn[t, bi, j] * r_ * (F1 - r_)
                        daz = dh * (hs[t, bi, j] - nn) * z * (F1 - z)
                        dxw[t, bi, j] = dar
                        dxw[t, bi, H + j] = daz
                        dxw[t, bi, 2 * H + j] = dan
                        dhw[t, bi, j] = dar
                        dhw[t, bi, H + j] = daz
                        dhw[t, bi, 2 * H + j] = dan * r_
                        carry[bi, j] = dh * z
                    else:
                        dxw[t, bi, j] = dh * _dact(hs[t + 1, bi, j], kind)
            grid.sync()

    return rec_fwd, rec_bwd
