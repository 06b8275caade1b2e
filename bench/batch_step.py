"""The cost of `charrnn serve`'s batch-independent step: `CpuBackend.step` (BLAS above 4 rows)
against `CpuBackend.step_rows` (cpu_kernels.mm_exact_batch, rows independent of the batch) on the
shipped model, for 1, 8, 32 and 64 rows, with BLAS on its default threads and on one thread
(bench/RESULTS.md, "charrnn serve under load"). Best of three interleaved 0.3 s runs each; it
first checks that step_rows gives each row alone what it gives in the batch. Then the exact
product alone on the model's recurrent shape (rows x hidden @ hidden x 4 hidden):
mm_exact_batch (cpu_tiles' register tiles from 5 rows, column blocks for 3-4) against mm_exact
(the row loop, which step_rows took for every row count before), interleaved, the two checked
bit-identical. dev/mm_exact_tiles.py compares the tile shapes themselves.

    python bench/batch_step.py
"""
from __future__ import annotations

import os
import time

import numpy as np

from charrnn import zoo
from charrnn.backends import cpu_kernels as K
from charrnn.backends.cpu import CpuBackend


def best_ms(f, codes, state) -> float:
    f(codes, state)
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < 0.3:
        f(codes, state)
        n += 1
    return (time.perf_counter() - t) / n * 1e3


def products(H: int) -> None:
    rng = np.random.default_rng(1)
    b = rng.standard_normal((H, 4 * H)).astype(np.float32)
    for B in (1, 8, 32, 64):
        a = rng.standard_normal((B, H)).astype(np.float32)
        c0 = rng.standard_normal((B, 4 * H)).astype(np.float32)
        old, new = c0.copy(), c0.copy()
        K.mm_exact(a, b, old, 1.0)
        K.mm_exact_batch(a, b, new, 1.0)
        assert np.array_equal(old, new), B
        res: dict[str, float] = {}
        for _ in range(3):
            for name, f in (("row loop", lambda x, y: K.mm_exact(a, b, c0, 1.0)),
                            ("batch loop", lambda x, y: K.mm_exact_batch(a, b, c0, 1.0))):
                res[name] = min(res.get(name, 1e9), best_ms(f, None, None))
        print(f"product {B:2d} x {H} @ {H} x {4 * H}: mm_exact {res['row loop']:.3f} ms, mm_exact_batch "
              f"{res['batch loop']:.3f} ms ({res['row loop'] / res['batch loop']:.2f}x faster)")


def main() -> None:
    ck = zoo.load_checkpoint("shakespeare")
    be = CpuBackend(ck.config, ck.params)
    rng = np.random.default_rng(0)
    state = (rng.standard_normal(be.zero_state(64).shape) * 0.5).astype(np.float32)
    codes = rng.integers(0, ck.config.vocab_size, 64)
    logits, _ = be.step_rows(codes, state)
    for i in (0, 31, 63):
        alone, _ = be.step_rows(codes[i:i + 1], state[:, :, i:i + 1])
        assert np.array_equal(alone[0], logits[i]), i
    print("load average", os.getloadavg(), "BLAS threads", K.blas_threads())
    for threads in (None, 1):
        ctx = K.blas_threads_at_most(threads) if threads else None
        if ctx:
            ctx.__enter__()
        for B in (1, 8, 32, 64):
            s, c = state[:, :, :B].copy(), codes[:B]
            res: dict[str, float] = {}
            for _ in range(3):
                for name, f in (("step", be.step), ("step_rows", be.step_rows)):
                    res[name] = min(res.get(name, 1e9), best_ms(f, c, s))
            print(f"BLAS threads {threads or 'default'}, {B:2d} rows: step {res['step']:.3f} ms, "
                  f"step_rows {res['step_rows']:.3f} ms ({res['step_rows'] / res['step']:.2f}x)")
        if ctx:
            ctx.__exit__(None, None, None)
    products(ck.config.hidden)
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
