"""Kernel variants for `charrnn serve`'s batched exact product, proved here before one goes into
charrnn/backends (llm.c's dev/ practice): each computes c += a @ b with every element summed in
exactly cpu_kernels.mm_exact's order (per four k: c + (((x0 y0 + x1 y1) + x2 y2) + x3 y3), then
c + x y per leftover k, contraction only), so each row must be bit-identical to mm_exact's.

- "rows": mm_exact itself (the row loop; what one client's step takes).
- "blocked": cpu_kernels.mm_exact_batch (256-column blocks, two rows per load of b).
- "tile RxC": a register tile written as LLVM IR through a Numba intrinsic: R rows x C vectors
  of 64 bytes (16 float32) of c held in registers across the whole of k, each vector of b
  loaded once for R rows, each broadcast of a once for C vectors. The IR has the same
  operations with the same `contract` flags as Numba emits for mm_exact's expression, so the
  backend fuses them the same way (checked here bit for bit, not assumed). The tile was
  written here first; it now lives in charrnn/backends/cpu_tiles.py (8 x 2 won, with tiles of
  even size), and this script builds its other shapes from there.

Checks every variant against mm_exact at the served model's shapes and awkward ones, then times
them (best of interleaved runs) on the served model's products: 16 rows per lane (32 clients),
32 and 8, k 256, n 1024 and 65. Reports GFLOP/s and, as the ceiling of this kernel on this core,
the tile's rate on a panel of b small enough to stay in L1.

    python dev/mm_exact_tiles.py
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from numba import njit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from charrnn.backends import cpu_kernels as K  # noqa: E402
from charrnn.backends import cpu_tiles as T  # noqa: E402
from charrnn.backends.cpu_tiles import _at  # noqa: E402

make_tile = T._make_tile     # the tile that graduated: any R x C here


def make_driver(R: int, C: int):
    """c += a @ b: panels of C vectors of columns, R rows at a time (fewer at the end), the
    panel's last whole vectors one at a time, the last partial vector by mm_exact's loop."""
    tiles = {(r, cc): make_tile(r, cc) for r in range(1, R + 1) for cc in sorted({C, 1})}
    names = {}
    src = ["def drive(a, b, c):",
           "    M, N = c.shape",
           "    Kd = a.shape[1]",
           "    sz = a.itemsize",
           "    lda, ldb, ldc = a.strides[0] // sz, b.strides[0] // sz, c.strides[0] // sz",
           "    W = 64 // sz",
           f"    P = W * {C}",
           "    NP = N - N % P",
           "    NV = N - N % W",
           "    for n0 in range(0, NP, P):",
           "        m = 0",
           f"        while m + {R} <= M:",
           f"            t_{R}_{C}(_at(a, m, 0), lda, _at(b, 0, n0), ldb, _at(c, m, n0), ldc, Kd)",
           f"            m += {R}"]
    for cc in ([C] if C == 1 else [C, 1]):
        if cc != C:         # the panels' leftover whole vectors, one at a time
            src += ["    for n0 in range(NP, NV, W):",
                    "        m = 0",
                    f"        while m + {R} <= M:",
                    f"            t_{R}_1(_at(a, m, 0), lda, _at(b, 0, n0), ldb, _at(c, m, n0), ldc, Kd)",
                    f"            m += {R}"]
        src.append("        r = M - m")
        for r in range(1, R):
            src.append(f"        {'if' if r == 1 else 'elif'} r == {r}:")
            src.append(f"            t_{r}_{cc}(_at(a, m, 0), lda, _at(b, 0, n0), ldb, _at(c, m, n0), ldc, Kd)")
    src += ["    if NV < N:",
            "        tail(a, b[:, NV:], c[:, NV:])"]
    for (r, cc), t in tiles.items():
        names[f"t_{r}_{cc}"] = t
    names["_at"] = _at
    names["tail"] = _tail
    ns = dict(names, np=np)
    exec("\n".join(src), ns)
    return njit(nogil=True, fastmath={"contract"}, error_model="numpy")(ns["drive"])


@njit(fastmath={"contract"}, error_model="numpy")
def _tail(a, b, c):
    """mm_exact's loop on the columns no whole vector covers."""
    K._mm_exact_rows(a, b, c)


def check(name, f, dtypes=(np.float32, np.float64)) -> None:
    rng = np.random.default_rng(5)
    for dt in dtypes:
        for Kd, N in ((256, 1024), (256, 65), (3, 5), (37, 160), (40, 259), (6, 511), (1, 17)):
            b = rng.standard_normal((Kd, N)).astype(dt)
            for M in list(range(1, 20)) + [32, 37]:
                a = rng.standard_normal((M, Kd)).astype(dt)
                c0 = rng.standard_normal((M, N)).astype(dt)
                want, got = c0.copy(), c0.copy()
                K.mm_exact(a, b, want, 1.0)
                f(a, b, got)
                if not np.array_equal(want.view(np.uint8), got.view(np.uint8)):
                    bad = np.argwhere(want != got)
                    raise AssertionError(f"{name}: {np.dtype(dt)} M={M} K={Kd} N={N}: {len(bad)} differ, first {bad[:3]}")
    print(f"{name}: bit-identical to mm_exact (rows 1..19, 32, 37; {[np.dtype(d).name for d in dtypes]})", flush=True)


def best_s(f, reps: int = 3, span: float = 0.2) -> float:
    f()
    best = 1e9
    for _ in range(reps):
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < span:
            f()
            n += 1
        best = min(best, (time.perf_counter() - t) / n)
    return best


def main() -> None:
    variants = {"rows": lambda a, b, c: K.mm_exact(a, b, c, 1.0),
                "blocked": lambda a, b, c: K.mm_exact_batch(a, b, c, 1.0)}
    for R, C in ((4, 4), (4, 3), (6, 2), (8, 2), (3, 4), (2, 4), (8, 1), (4, 2)):
        variants[f"tile {R}x{C}"] = make_driver(R, C)
    for name, f in variants.items():
        if name.startswith("tile"):
            check(name, f)
    print("load average", os.getloadavg(), flush=True)
    rng = np.random.default_rng(1)
    for M, Kd, N in ((16, 256, 1024), (16, 256, 65), (32, 256, 1024), (8, 256, 1024), (1, 256, 1024),
                     (4, 64, 64)):
        a = rng.standard_normal((M, Kd)).astype(np.float32)
        b = rng.standard_normal((Kd, N)).astype(np.float32)
        c = np.zeros((M, N), np.float32)
        res = {}
        for _ in range(2):
            for name, f in variants.items():
                res[name] = min(res.get(name, 1e9), best_s(lambda: f(a, b, c)))
        flop = 2.0 * M * Kd * N
        line = ", ".join(f"{n} {t * 1e6:.1f} us ({flop / t / 1e9:.0f} GF/s)" for n, t in res.items())
        print(f"{M}x{Kd} @ {Kd}x{N}: {line}", flush=True)
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()


def ceiling(R: int = 8, C: int = 2, Kd: int = 128, reps: int = 20000) -> float:
    """GFLOP/s of the RxC tile alone on an R x Kd @ Kd x 16C product whose b (Kd x 16C floats)
    stays in L1, called `reps` times from compiled code: this kernel's ceiling on this core."""
    t = make_tile(R, C)

    @njit(nogil=True)
    def loop(a, b, c, n):
        for _ in range(n):
            t(_at(a, 0, 0), a.shape[1], _at(b, 0, 0), b.shape[1], _at(c, 0, 0), c.shape[1], a.shape[1])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((R, Kd)).astype(np.float32) * 1e-3
    b = rng.standard_normal((Kd, 16 * C)).astype(np.float32) * 1e-3
    c = np.zeros((R, 16 * C), np.float32)
    loop(a, b, c, 10)
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        loop(a, b, c, reps)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * R * Kd * 16 * C * reps / best / 1e9


def make_packed(R: int, C: int):
    """The RxC tile on b packed panel by panel (pack(b, C): each panel of C vectors of
    columns contiguous over k), whole panels only: what packing the weights once would buy."""
    t = make_tile(R, C)
    tr = {r: make_tile(r, C) for r in range(1, R)}
    assert R == 8 and C == 2
    t1, t2, t3, t4, t5, t6, t7 = (tr[r] for r in range(1, 8))

    @njit(nogil=True, fastmath={"contract"}, error_model="numpy")
    def drive(a, bp, c):
        M, N = c.shape
        Kd = a.shape[1]
        P = bp.shape[1]
        lda, ldc = a.shape[1], c.shape[1]
        for p in range(N // P):
            n0 = p * P
            m = 0
            while m + 8 <= M:
                t(_at(a, m, 0), lda, _at(bp, p * Kd, 0), P, _at(c, m, n0), ldc, Kd)
                m += 8
            r = M - m
            if r == 1:
                t1(_at(a, m, 0), lda, _at(bp, p * Kd, 0), P, _at(c, m, n0), ldc, Kd)
            elif r == 2:
                t2(_at(a, m, 0), lda, _at(bp, p * Kd, 0), P, _at(c, m, n0), ldc, Kd)
            elif r == 3:
                t3(_at(a, m, 0), lda, _at(bp, p * Kd, 0), P, _at(c, m, n0), ldc, Kd)
            elif r == 4:
                t4(_at(a, m, 0), lda, _at(bp, p * Kd, 0), P, _at(c, m, n0), ldc, Kd)
            elif r == 5:
                t5(_at(a, m, 0), lda, _at(bp, p * Kd, 0), P, _at(c, m, n0), ldc, Kd)
            elif r == 6:
                t6(_at(a, m, 0), lda, _at(bp, p * Kd, 0), P, _at(c, m, n0), ldc, Kd)
            elif r == 7:
                t7(_at(a, m, 0), lda, _at(bp, p * Kd, 0), P, _at(c, m, n0), ldc, Kd)
    return drive


def pack(b, C: int):
    P = (64 // b.itemsize) * C
    Kd, N = b.shape
    return np.ascontiguousarray(b[:, :N - N % P].reshape(Kd, N // P, P).transpose(1, 0, 2)).reshape(-1, P)


def packed_main():
    f, g = make_driver(8, 2), make_packed(8, 2)
    rng = np.random.default_rng(1)
    print("load average", os.getloadavg(), flush=True)
    for M in (16, 8, 32):
        a = rng.standard_normal((M, 256)).astype(np.float32)
        b = rng.standard_normal((256, 1024)).astype(np.float32)
        bp = pack(b, 2)
        c1, c2 = np.zeros((M, 1024), np.float32), np.zeros((M, 1024), np.float32)
        f(a, b, c1)
        g(a, bp, c2)
        assert np.array_equal(c1, c2)
        res = {}
        for _ in range(3):
            res["8x2"] = min(res.get("8x2", 1e9), best_s(lambda: f(a, b, c1)))
            res["8x2 packed"] = min(res.get("8x2 packed", 1e9), best_s(lambda: g(a, bp, c2)))
        flop = 2.0 * M * 256 * 1024
        print(f"{M}x256 @ 256x1024: " + ", ".join(f"{n} {t * 1e6:.1f} us ({flop / t / 1e9:.0f} GF/s)"
                                                   for n, t in res.items()), flush=True)
