"""The GPU backend's persistent recurrence: a layer's whole time loop, forward or backward, in
one cooperative launch, the recurrent product fused with cuda_cells.py's cell step.
"""
from __future__ import annotations

from numba import cuda, float32

from charrnn.backends.cuda_cells import gru_cell, gru_cell_grad, lstm_cell, lstm_cell_grad, rnn_cell, rnn_cell_grad
from charrnn.backends.cuda_device import F0, GRU, LSTM
from charrnn.backends.cuda_gemm import make_slice_io

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
                        i, f, g_, o, cc, tc = lstm_cell(xw[row, j] + acc[0], xw[row, H + j] + acc[1],
                                                        xw[row, 2 * H + j] + acc[2], xw[row, 3 * H + j] + acc[3],
                                                        cs[t, bi, j], kind)
                        gates[t, bi, j] = i
                        gates[t, bi, H + j] = f
                        gates[t, bi, 2 * H + j] = g_
                        gates[t, bi, 3 * H + j] = o
                        cs[t + 1, bi, j] = cc
                        tcs[t, bi, j] = tc
                        hs[t + 1, bi, j] = o * tc
                    elif cell == GRU:
                        q = acc[2] + bh[j]
                        r_, z, nn, hh = gru_cell(xw[row, j] + acc[0], xw[row, H + j] + acc[1], xw[row, 2 * H + j], q,
                                                 hs[t, bi, j], kind)
                        gates[t, bi, j] = r_
                        gates[t, bi, H + j] = z
                        gates[t, bi, 2 * H + j] = nn
                        hn[t, bi, j] = q
                        hs[t + 1, bi, j] = hh
                    else:
                        hs[t + 1, bi, j] = rnn_cell(xw[row, j] + acc[0], kind)
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
                        dai, daf, dag, dao, dcp = lstm_cell_grad(dh, dc[bi, j] if t < T - 1 else F0, gates[t, bi, j],
                                                                 gates[t, bi, H + j], gates[t, bi, 2 * H + j],
                                                                 gates[t, bi, 3 * H + j], cs[t, bi, j], tcs[t, bi, j],
                                                                 kind)
                        dxw[t, bi, j] = dai
                        dxw[t, bi, H + j] = daf
                        dxw[t, bi, 2 * H + j] = dag
                        dxw[t, bi, 3 * H + j] = dao
                        dc[bi, j] = dcp
                    elif cell == GRU:
                        if t < T - 1:
                            dh += carry[bi, j]
                        r_ = gates[t, bi, j]
                        dar, daz, dan, dhz = gru_cell_grad(dh, r_, gates[t, bi, H + j], gates[t, bi, 2 * H + j],
                                                           hn[t, bi, j], hs[t, bi, j], kind)
                        dxw[t, bi, j] = dar
                        dxw[t, bi, H + j] = daz
                        dxw[t, bi, 2 * H + j] = dan
                        dhw[t, bi, j] = dar
                        dhw[t, bi, H + j] = daz
                        dhw[t, bi, 2 * H + j] = dan * r_
                        carry[bi, j] = dhz
                    else:
                        dxw[t, bi, j] = rnn_cell_grad(dh, hs[t + 1, bi, j], kind)
            grid.sync()

    return rec_fwd, rec_bwd
