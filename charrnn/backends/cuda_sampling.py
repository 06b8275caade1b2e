"""The GPU backend's sampling kernels: one fused matrix-vector-plus-gates kernel per layer and
step (`sample_layer`), one output kernel that scores, filters and draws (`sample_out`), and the
whole loop of steps in one cooperative launch (`sample_loop`). The cells' step is
cuda_cells.py's; the draw follows sample.distribution and sample.draw.
"""
from __future__ import annotations

import math

from numba import cuda, float32, float64, int64

from charrnn.backends.cuda_cells import gru_cell, lstm_cell, rnn_cell
from charrnn.backends.cuda_device import F0, GRU, LSTM, NW, RED, block_max, block_sum
from charrnn.backends.cuda_softmax import row_logsumexp

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
                _, _, _, o, cc, tc = lstm_cell(rx[0] + b[j] + rh[0], rx[32] + b[H + j] + rh[32],
                                               rx[64] + b[2 * H + j] + rh[64], rx[96] + b[3 * H + j] + rh[96],
                                               c_prev[bi, j], kind)
                c_out[bi, j] = cc
                h_out[bi, j] = o * tc
            elif cell == GRU:
                _, _, _, hh = gru_cell(rx[0] + b[j] + rh[0], rx[32] + b[H + j] + rh[32], rx[64] + b[2 * H + j],
                                       rh[64] + bh[j], h_prev[bi, j], kind)
                h_out[bi, j] = hh
            else:
                h_out[bi, j] = rnn_cell(rx[0] + b[j] + rh[0], kind)
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
    lognorm = row_logsumexp(logits, bi, red, t)       # of the plain logits, for logp
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
        kmax = block_max(red, t)
        acc3 = 0.0
        for k in range(t, V, RED):
            e = math.exp(probs[bi, k] - kmax)
            probs[bi, k] = e
            acc3 += e
        red[t] = acc3
        total = block_sum(red, t)
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
                        _, _, _, o, cc, tc = lstm_cell(gsum[0, q0] + w[bofs_l + j] + gsum[1, q0],
                                                       gsum[0, q0 + 1] + w[bofs_l + H + j] + gsum[1, q0 + 1],
                                                       gsum[0, q0 + 2] + w[bofs_l + 2 * H + j] + gsum[1, q0 + 2],
                                                       gsum[0, q0 + 3] + w[bofs_l + 3 * H + j] + gsum[1, q0 + 3],
                                                       S[src, l, 1, bi, j], kind)
                        S[dst, l, 1, bi, j] = cc
                        S[dst, l, 0, bi, j] = o * tc
                    elif cell == GRU:
                        _, _, _, hh = gru_cell(gsum[0, q0] + w[bofs_l + j] + gsum[1, q0],
                                               gsum[0, q0 + 1] + w[bofs_l + H + j] + gsum[1, q0 + 1],
                                               gsum[0, q0 + 2] + w[bofs_l + 2 * H + j],
                                               gsum[1, q0 + 2] + w[bhofs[l] + j], S[src, l, 0, bi, j], kind)
                        S[dst, l, 0, bi, j] = hh
                    else:
                        S[dst, l, 0, bi, j] = rnn_cell(gsum[0, q0] + w[bofs_l + j] + gsum[1, q0], kind)
                cuda.syncthreads()
            grid.sync()
        for bi in range(cuda.blockIdx.x, B, cuda.gridDim.x):
            _out_row(bi, W, bo, S[dst, L - 1, 0], logits, probs, temp, top_k, u, st, 1, codes, hist, logp,
                     pout, red, idx)
        grid.sync()
