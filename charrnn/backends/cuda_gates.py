"""The GPU backend's elementwise kernels of a training window: the one-hot row gather and
row scatter-add, column sums, fill and copy, dropout from the counter-based hash of
charrnn/dropout.py, and the per-step gate kernels of each cell, forward and backward, one time
step each (the recurrent product is a separate GEMM, as in the CPU backend). The cell math is
cuda_cells.py's; these kernels only read and write it. Where cooperative launches work, the
persistent recurrence (cuda_recurrence.py) runs the time loop instead of the per-step kernels.
"""
from __future__ import annotations

from numba import cuda, float32, uint64

from charrnn.backends.cuda_cells import gru_cell, gru_cell_grad, lstm_cell, lstm_cell_grad, rnn_cell, rnn_cell_grad
from charrnn.backends.cuda_device import CS_ROWS, F0, hash_uniform

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


# ---------------------------------------------------------------- per-step gate kernels
@cuda.jit(cache=True)
def lstm_fwd(xw, hw, c_prev, kind, gates, c, tc, h):
    n = cuda.grid(1)
    B, H = c.shape[0], c.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        i, f, g, o, cc, t = lstm_cell(xw[bi, j] + hw[bi, j], xw[bi, H + j] + hw[bi, H + j],
                                      xw[bi, 2 * H + j] + hw[bi, 2 * H + j], xw[bi, 3 * H + j] + hw[bi, 3 * H + j],
                                      c_prev[bi, j], kind)
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
        dai, daf, dag, dao, dc = lstm_cell_grad(dh_out[bi, j] + dh_next[bi, j], dc_next[bi, j], gates[bi, j],
                                                gates[bi, H + j], gates[bi, 2 * H + j], gates[bi, 3 * H + j],
                                                c_prev[bi, j], tc[bi, j], kind)
        da[bi, j] = dai
        da[bi, H + j] = daf
        da[bi, 2 * H + j] = dag
        da[bi, 3 * H + j] = dao
        dc_next[bi, j] = dc


@cuda.jit(cache=True)
def gru_fwd(xw, hw, bh, h_prev, kind, gates, hn, h):
    n = cuda.grid(1)
    B, H = h.shape[0], h.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        q = hw[bi, 2 * H + j] + bh[j]
        r, z, nn, hh = gru_cell(xw[bi, j] + hw[bi, j], xw[bi, H + j] + hw[bi, H + j], xw[bi, 2 * H + j], q,
                                h_prev[bi, j], kind)
        gates[bi, j] = r
        gates[bi, H + j] = z
        gates[bi, 2 * H + j] = nn
        hn[bi, j] = q
        h[bi, j] = hh


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
        dar, daz, dan, dhz = gru_cell_grad(dh_out[bi, j] + dh_next[bi, j], r, gates[bi, H + j],
                                           gates[bi, 2 * H + j], hn[bi, j], h_prev[bi, j], kind)
        dxw[bi, j] = dar
        dxw[bi, H + j] = daz
        dxw[bi, 2 * H + j] = dan
        dhw[bi, j] = dar
        dhw[bi, H + j] = daz
        dhw[bi, 2 * H + j] = dan * r
        dh_next[bi, j] = dhz


@cuda.jit(cache=True)
def rnn_fwd(xw, hw, kind, h):
    n = cuda.grid(1)
    B, H = h.shape[0], h.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        h[bi, j] = rnn_cell(xw[bi, j] + hw[bi, j], kind)


@cuda.jit(fastmath=True, cache=True)
def rnn_bwd(dh_out, dh_next, h, kind, da):
    n = cuda.grid(1)
    B, H = h.shape[0], h.shape[1]
    if n < B * H:
        bi = n // H
        j = n - bi * H
        da[bi, j] = rnn_cell_grad(dh_out[bi, j] + dh_next[bi, j], h[bi, j], kind)
