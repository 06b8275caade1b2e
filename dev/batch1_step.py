"""Where a step of batch-1 evaluation on two per-core workers (cpu_batch1.lstm_window_part) spends
its time, and variants of the step proved here before one goes into charrnn/backends (llm.c's
dev/ practice). Config d of bench/speed.py (one layer of 256 units, 65 symbols), windows of 256.

A copy of lstm_window_part's two-worker loop with a cycle counter (rdtsc) read around each part
of a step, per worker: the product of its packed Wh columns, the cell with the copies around it,
the barrier's flag updates and its wait. Variants (bits of `v`):

- 1: copy h (the step's input, half of it written by the partner core) into a local buffer
  before the product, so that its cache lines are all asked for at once, not one at a time as
  the product's k loop reaches them.
- 2: no input-projection phase for a one-hot first layer: each step gathers its units' columns
  of Wx's row for the step's code itself (1 MB of `pre` written and read again, less).
- 16: pack Wh's columns by row slices.
- 32: no packing: the product reads the worker's four column blocks of Wh in place.
- 64: the package's helping barrier (a worker that waits long does the late worker's step).
- 128: the product eight rows a pass (_gemv8).
- 256: h, c and the packed weights in buffers that start a cache line (NumPy's start 16 bytes
  in: every 64-byte load of the product then spans two lines, and the two workers' h and c share
  the line where their units meet).
- 4, 8: skip the product, skip the cell (timing only: the results are then wrong).

Every variant that computes is checked bit for bit against the package kernel, then each is
timed (median us a step over windows, interleaved) through cpu_batch1.run_parts. Bits 2, 16, 64
and 256 are what the package kernel does now; 1 and 128 gained nothing, 32 doubled the product. On the
2-core EPYC (Zen 4), load 1.5-1.8, 2026-12-07: a window's kernel 2611 -> 2332 us with 2 (its
projection phase took 196-233 us), packing 113 -> 82 us with 16, the product 6.69 -> 6.09 us a step
with 256; the rest of a step: the cell and its copies 1.1-1.6 us, the barrier's wait 0.8-1.1 us.

    python dev/batch1_step.py
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from charrnn.backends import cpu_batch1 as B1  # noqa: E402
from charrnn.backends import cpu_kernels as K  # noqa: E402
from charrnn.backends.cpu import CpuBackend  # noqa: E402
from charrnn.backends.cpu_batch1 import (ABORT, FIN, _atomic_load, _atomic_max, _bounds, _call_cells,  # noqa: E402
                                         _gemv_cols, _late, _pause, _proj_unit)
from charrnn.model import ModelConfig, init_params  # noqa: E402

_EXACT = {"contract"}


@intrinsic
def _cycles(typingctx):
    """The time-stamp counter (rdtsc)."""
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return types.int64(), codegen


@njit(nogil=True, fastmath=_EXACT, error_model="numpy")
def _gemv8(x, W, a):
    """_gemv_cols(x, W, a, 0, 0, len(a), 1) eight rows of W a pass: the sum of each four rows is
    added to a[n] as there (same bits), the running sum kept in a register between two fours."""
    Kd = x.shape[0]
    K8 = Kd - Kd % 8
    w = a.shape[0]
    for k in range(0, K8, 8):
        x0, x1, x2, x3, x4, x5, x6, x7 = x[k], x[k + 1], x[k + 2], x[k + 3], x[k + 4], x[k + 5], x[k + 6], x[k + 7]
        b0, b1, b2, b3 = W[k, :w], W[k + 1, :w], W[k + 2, :w], W[k + 3, :w]
        b4, b5, b6, b7 = W[k + 4, :w], W[k + 5, :w], W[k + 6, :w], W[k + 7, :w]
        for n in range(w):
            s = a[n] + (x0 * b0[n] + x1 * b1[n] + x2 * b2[n] + x3 * b3[n])
            a[n] = s + (x4 * b4[n] + x5 * b5[n] + x6 * b6[n] + x7 * b7[n])
    if Kd > K8:
        _gemv_cols(x[K8:], W[K8:], a, 0, 0, w, 1)


@njit(inline="always", error_model="numpy")
def _step_v(q, parts, l, t, hs, cs, pre, W, bias, kind, cells, bufs, xl, v, prof, me, flat, o_x, code):
    H = hs.shape[2]
    j0, j1 = _bounds(q, parts, H)
    w = j1 - j0
    fa, fc, fh, ft, fv, fw, fq, fi = bufs
    c0 = _cycles()
    a = fa[:4 * w].reshape(1, 4 * w)
    if o_x >= 0:                          # one-hot input: Wx's row of the code, gathered here
        r = o_x + code * 4 * H + j0
        for g in range(4):
            for n in range(w):
                a[0, g * w + n] = flat[r + g * H + n]
    else:
        for g in range(4):
            for n in range(w):
                a[0, g * w + n] = pre[t, g * H + j0 + n]
    x = hs[l, t]
    if v & 1:
        for k in range(H):
            xl[k] = x[k]
        x = xl
    if v & 4:
        pass
    elif v & 32 or q != me:
        _gemv_cols(x, W, a[0], H, j0, w, 4)
    elif v & 128:
        _gemv8(x, W, a[0])
    else:
        _gemv_cols(x, W, a[0], 0, 0, 4 * w, 1)
    c1 = _cycles()
    cn, hn = fc[:w].reshape(1, w), fh[:w].reshape(1, w)
    if not v & 8:
        _call_cells(cells, a, bias[q, :4 * w], cs[l, t, j0:j1], kind, cn, ft[:w].reshape(1, w), hn,
                    fv[:4 * w].reshape(1, 4 * w), fw[:w].reshape(1, w), fq[:4 * w], fi[:4 * w])
    for n in range(w):
        hs[l, t + 1, j0 + n] = hn[0, n]
        cs[l, t + 1, j0 + n] = cn[0, n]
    c2 = _cycles()
    if q == me:
        prof[0] += c1 - c0
        prof[1] += c2 - c1


@njit(nogil=True, fastmath=_EXACT, error_model="numpy")
def window_v(part, parts, flat, wflat, offs, embed_off, embed, out_w, codes, ys, hs, cs, pre, logits,
             losses, kind, cells, sync, spin, wp, v, prof):
    """lstm_window_part (parts > 1, evaluation) with variant bits v and cycle counts in prof:
    [0] product (and the copies before it), [1] cell and the copies after, [2] the barrier's
    flag updates, [3] its wait, [4] the whole window, [5] the steps, [6] packing Wh's columns,
    [7] the input projection, [8] the output layer and the loss, [9] steps done for the partner."""
    w0 = _cycles()
    L, T1, H = hs.shape
    T = T1 - 1
    G = 4 * H
    V = logits.shape[1]
    dt = flat.dtype
    wmax = 0
    for q in range(parts):
        b0, b1 = _bounds(q, parts, H)
        wmax = max(wmax, b1 - b0)
    j0, j1 = _bounds(part, parts, H)
    w = j1 - j0
    bufs = (np.empty(4 * wmax, dt), np.empty(wmax, dt), np.empty(wmax, dt), np.empty(wmax, dt),
            np.empty(4 * wmax, dt), np.empty(wmax, dt), np.empty(4 * wmax, dt), np.empty(4 * wmax, np.int32))
    bias = np.empty((parts, 4 * wmax), dt)
    xl = np.empty(H, dt)
    x = np.empty((T if embed_off >= 0 else 0, embed), dt)
    late = spin // 8
    phase = 0
    for l in range(L):
        o_h, o_b = offs[l, 1], offs[l, 2]
        Wh = wflat[o_h:o_h + H * G].reshape(H, G)
        Wp = wp[:H * 4 * w].reshape(H, 4 * w)
        c0 = _cycles()
        if v & 32:
            Wp = Wh
        elif v & 16:
            for k in range(H):
                src, dst = Wh[k], Wp[k]
                for g in range(4):
                    dst[g * w:g * w + w] = src[g * H + j0:g * H + j0 + w]
        else:
            for k in range(H):
                for g in range(4):
                    for n in range(w):
                        Wp[k, g * w + n] = Wh[k, g * H + j0 + n]
        for q in range(parts):
            b0, b1 = _bounds(q, parts, H)
            for g in range(4):
                for n in range(b1 - b0):
                    bias[q, g * (b1 - b0) + n] = flat[o_b + g * H + b0 + n]
        prof[6] += _cycles() - c0
        fuse = v & 2 and l == 0 and embed_off < 0
        for t in range(-1, T):
            if t < 0 and fuse:
                continue
            phase += 1
            c0 = _cycles()
            if t < 0:
                _proj_unit(part, parts, l, flat, offs, embed_off, embed, V, codes, hs, pre, x)
                _atomic_max(sync, FIN + 8 * part, phase)
                prof[7] += _cycles() - c0
            else:
                _atomic_max(sync, FIN + 8 * (2 * parts + part), phase)
                _step_v(part, parts, l, t, hs, cs, pre, Wp, bias, kind, cells, bufs, xl, v, prof, part, flat,
                        offs[l, 0] if fuse else -1, codes[t])
                c1 = _cycles()
                _atomic_max(sync, FIN + 8 * part, phase)
                prof[2] += _cycles() - c1
                prof[5] += 1
            c0 = _cycles()
            n = 0
            while True:
                q = _late(sync, parts, phase)
                if q < 0:
                    break
                if _atomic_load(sync, ABORT) != 0:
                    return
                n += 1
                if (v & 64 and t >= 0 and
                        (n > late or _atomic_load(sync, FIN + 8 * (2 * parts + q)) < phase - 1)):
                    _step_v(q, parts, l, t, hs, cs, pre, Wh, bias, kind, cells, bufs, xl, v, prof, part, flat,
                            offs[l, 0] if fuse else -1, codes[t])
                    _atomic_max(sync, FIN + 8 * q, phase)
                    prof[9] += 1
                    n = 0
                else:
                    _pause()
            if t >= 0:
                prof[3] += _cycles() - c0
    c0 = _cycles()
    r0, r1 = T * part // parts, T * (part + 1) // parts
    if r1 > r0:
        lg = logits[r0:r1]
        K.gemm(hs[L - 1, 1 + r0:1 + r1], flat[out_w:out_w + H * V].reshape(H, V), lg, False, False, 0.0)
        K.add_bias(lg, flat[out_w + H * V:out_w + H * V + V])
        for r in range(r0, r1):
            losses[r] = K.softmax_xent(logits[r:r + 1], ys[r:r + 1], 1.0, False)
    prof[8] += _cycles() - c0
    prof[4] += _cycles() - w0


def tsc_hz() -> float:
    @njit
    def now():
        return _cycles()
    now()
    c, t = now(), time.perf_counter()
    time.sleep(0.2)
    return (now() - c) / (time.perf_counter() - t)


def main() -> None:
    H, V, T = 256, 65, 256
    cfg = ModelConfig(vocab_size=V, hidden=H, layers=1, dropout=0.0, cell="lstm")
    be = CpuBackend(cfg, init_params(cfg, np.random.default_rng(0)))
    rng = np.random.default_rng(1)
    text = rng.integers(0, V, T + 1)
    x, y = text[:-1].reshape(-1, 1), text[1:].reshape(-1, 1)
    state = (rng.standard_normal((1, 2, 1, H)) * 0.5).astype(np.float32)
    b1 = be._batch1_for(1, T)
    parts = b1.parts
    print("load average", os.getloadavg(), "workers", parts, flush=True)
    hz = tsc_hz()
    ref_loss, ref_state = b1.loss(x, y, state)

    dt = np.float32
    T1 = T + 1
    bufs = {}
    for line in (False, True):
        get = (lambda n, dt: B1.line_aligned((n,), dt)) if line else (lambda n, dt: np.empty(n, dt))
        bufs[line] = (get(T1 * H, dt).reshape(1, T1, H), get(T1 * H, dt).reshape(1, T1, H),
                      [get(len(p), p.dtype) for p in b1._packs(parts)])
    pre, logits = np.empty((T, 4 * H), dt), np.empty((T, V), dt)

    def run(v, prof):
        hs, cs, packs = bufs[bool(v & 256)]
        hs[:, 0], cs[:, 0] = state[:, 0, 0], state[:, 1, 0]
        losses = np.empty(T)

        def fn(part, sync):
            window_v(part, parts, b1.flat, b1.wflat, b1.offs, b1.embed_off, b1.embed, b1.out_w, x.reshape(-1),
                     y.reshape(-1), hs, cs, pre, logits, losses, b1.kind, b1.cells, sync, b1.spin, packs[part], v,
                     prof[part])
        B1.run_parts(parts, fn)
        return float(np.sum(losses))

    variants = [0, 82, 338]   # before this work (less the helping barrier); 2 + 16 + 64; and aligned: the package's
    for v in variants:
        prof = np.zeros((parts, 10), np.int64)
        loss = run(v, prof)
        if not v & 12:
            same = loss == ref_loss and np.array_equal(bufs[bool(v & 256)][0][:, T], ref_state[:, 0, 0])
            print(f"variant {v}: {'same bits' if same else 'DIFFERENT'} as the package kernel", flush=True)
    results = {v: [] for v in ["pkg"] + variants}
    profs = {v: np.zeros((parts, 10), np.int64) for v in variants}
    for _ in range(30):
        t0 = time.perf_counter()
        b1.loss(x, y, state)
        results["pkg"].append((time.perf_counter() - t0) / T * 1e6)
        for v in variants:
            prof = np.zeros((parts, 10), np.int64)
            t0 = time.perf_counter()
            run(v, prof)
            results[v].append((time.perf_counter() - t0) / T * 1e6)
            profs[v] += prof
    us = 1e6 / hz
    empty = []
    for _ in range(200):
        t0 = time.perf_counter()
        B1.run_parts(parts, lambda part, sync: None)
        empty.append((time.perf_counter() - t0) * 1e6)
    print(f"an empty run_parts: {np.median(empty):.0f} us (median)")
    for v in ["pkg"] + variants:
        line = f"{str(v):>4}: {np.median(results[v]):6.2f} us a step (median; best {min(results[v]):.2f})"
        if v != "pkg":
            p = profs[v]
            steps = p[:, 5].sum() / parts
            n = steps / T
            parts_us = [p[:, i].mean() / steps * us for i in range(4)]
            line += (f"  product {parts_us[0]:.2f}, cell+copies {parts_us[1]:.2f}, flags {parts_us[2]:.2f}, "
                     f"wait {parts_us[3]:.2f}, kernel {p[:, 4].mean() / steps * us:.2f} us a step; a window: "
                     f"pack {p[:, 6].mean() / n * us:.0f}, projection {p[:, 7].mean() / n * us:.0f}, "
                     f"output {p[:, 8].mean() / n * us:.0f}, kernel {p[:, 4].mean() / n * us:.0f} us; "
                     f"{p[:, 9].sum() / n:.1f} steps helped")
        print(line, flush=True)
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
