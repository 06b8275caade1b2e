"""Where a batched exact step (`CpuBackend.step_rows`, one lane) spends its time on the served
model: the whole lstm_step against its products alone (mm_exact_batch) and its per-row cell
calls alone, for 8, 16 and 32 rows on one thread; then what two lanes add: two 16-row steps
on `Lanes.run` against one alone, `step_rows` on 32 rows, and an empty `Lanes.run`.

    python dev/step_parts.py
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from numba import njit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from charrnn import zoo  # noqa: E402
from charrnn.backends import cpu_kernels as K  # noqa: E402
from charrnn.backends.cpu import CpuBackend  # noqa: E402
from charrnn.backends.lanes import lanes  # noqa: E402
from mm_exact_tiles import best_s  # noqa: E402


@njit(nogil=True, error_model="numpy")
def cells_rows(pre, bias, state, new_state, kind, cells, layers):
    """lstm_step's per-row cell calls (fixed), `layers` times."""
    B, G = pre.shape
    H = G // 4
    dt = pre.dtype
    v = np.empty((B, G), dt)
    w = np.empty((B, H), dt)
    q = np.empty(B * G, dt)
    ib = np.empty(B * G, np.int32)
    tc = np.empty((B, H), dt)
    for l in range(layers):
        for bi in range(B):
            K._call_cells(cells, pre[bi:bi + 1], bias, state[l, 1, bi:bi + 1], kind,
                          new_state[l, 1, bi:bi + 1], tc[bi:bi + 1], new_state[l, 0, bi:bi + 1], v, w, q, ib)


def main():
    ck = zoo.load_checkpoint("shakespeare")
    be = CpuBackend(ck.config, ck.params)
    cfg = ck.config
    H, V, L = cfg.hidden, cfg.vocab_size, cfg.layers
    rng = np.random.default_rng(0)
    cells = K.lstm_cells_at(np.float32)
    W = be.p.flat
    print("load average", os.getloadavg())
    for B in (8, 16, 32):
        state = (rng.standard_normal((L, 2, B, H)) * 0.5).astype(np.float32)
        new = np.empty_like(state)
        codes = rng.integers(0, V, B)
        logits = np.empty((B, V), np.float32)
        step = lambda: K.lstm_step(W, be._offs, be._embed_off, cfg.embed, be._out_off, codes, state, new,  # noqa
                                   logits, be.kind, cells, True, True)
        a = (rng.standard_normal((B, H))).astype(np.float32)
        bh = rng.standard_normal((H, 4 * H)).astype(np.float32)
        bo = rng.standard_normal((H, V)).astype(np.float32)
        c = np.zeros((B, 4 * H), np.float32)
        co = np.zeros((B, V), np.float32)

        def prods():
            for _ in range(2 * L - 1):
                K.mm_exact_batch(a, bh, c, 1.0)
            K.mm_exact_batch(a, bo, co, 0.0)
        pre = (rng.standard_normal((B, 4 * H)) * 2).astype(np.float32)
        bias = np.zeros(4 * H, np.float32)
        cl = lambda: cells_rows(pre.copy(), bias, state, new, be.kind, cells, L)  # noqa
        ts, tp, tc = (best_s(f) * 1e6 for f in (step, prods, cl))
        print(f"{B:2d} rows, one thread: lstm_step {ts:.0f} us, its products {tp:.0f} us ({tp / ts:.0%}), "
              f"its cells {tc:.0f} us ({tc / ts:.0%}), the rest {ts - tp - tc:.0f} us", flush=True)
    steps = []
    for _ in range(2):
        state = (rng.standard_normal((L, 2, 16, H)) * 0.5).astype(np.float32)
        new, codes, logits = np.empty_like(state), rng.integers(0, V, 16), np.empty((16, V), np.float32)
        steps.append(lambda s=state, n=new, c=codes, o=logits: K.lstm_step(
            W, be._offs, be._embed_off, cfg.embed, be._out_off, c, s, n, o, be.kind, cells, True, True))
    pool = lanes(2)
    state = (rng.standard_normal((L, 2, 32, H)) * 0.5).astype(np.float32)
    codes = rng.integers(0, V, 32)
    one, two = best_s(steps[0]) * 1e6, best_s(lambda: pool.run(lambda lane: steps[lane]())) * 1e6
    rows, empty = best_s(lambda: be.step_rows(codes, state)) * 1e6, best_s(lambda: pool.run(lambda lane: None)) * 1e6
    print(f"one 16-row lstm_step {one:.0f} us, two on two lanes {two:.0f} us, step_rows of 32 rows {rows:.0f} us, "
          f"an empty Lanes.run {empty:.0f} us")
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
