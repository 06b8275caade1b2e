"""The GPU backend's matrix product: a tiled shared-memory GEMM made by a factory for a few tile
shapes (cuda.py's TILES), and the staged operand slices it shares with the persistent
recurrence (cuda_recurrence.py). Sizes come from the arguments; the tiles are fixed per kernel.
"""
from __future__ import annotations

from numba import cuda, float32

from charrnn.backends.cuda_device import F0

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
