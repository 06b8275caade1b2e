"""Register tiles for the batched exact product (`cpu_kernels.mm_exact_batch`, `charrnn serve`'s
steps), written as LLVM IR because Numba's loops did not vectorise them.

A tile is 4 to 8 rows x two vectors of columns of c (a vector: 64 bytes with AVX-512, else
32), held in registers over the whole of k: each vector of b is loaded once for every row
of the tile and each element of a once for every vector. Every element is summed in exactly
`cpu_kernels.mm_exact`'s order: per four k, c + (((x0 y0 + x1 y1) + x2 y2) + x3 y3), then
c + x y for each k left over. The IR holds the same operations, in the same order and with the
same `contract` flag, that Numba emits for mm_exact's expression, so the backend fuses the same
multiplies into the same adds (in both, each sum becomes a multiply and three fused
multiply-adds, then an add) and every row comes out bit-identical to mm_exact's
(tests/test_cpu_tiles.py checks rows 1..37 at awkward shapes). Nothing is assumed about which
multiply the backend fuses: the two codes are handed the same choice.

dev/mm_exact_tiles.py proved the shapes on the served model (16 rows per lane, k 256, n 1024):
8 rows x 2 vectors runs at ~100 GFLOP/s on one Zen 4 core, ~90% of what the same tile does with
b in L1, against ~50 for the column-blocked loop it replaces there. Fewer rows per tile read the
strided columns of b for less work, so a batch is cut into tiles of 4 to 8 rows of even size
(9 rows: 4 + 5, not 8 + 1).

Numba's on-disk cache of mm_exact_batch (cache=True, in cpu_kernels.py) sees changes to
cpu_kernels.py only: after editing this file, touch cpu_kernels.py (or clear its __pycache__),
or the cached kernel keeps the old tiles.
"""
from __future__ import annotations

import llvmlite.binding as _ll
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# one vector of c: a zmm register with AVX-512; two ymm halves of it would spill a tile of 8 x 2
VEC_BYTES = 64 if _ll.get_host_cpu_features().get("avx512f", False) else 32
# where the tiles were measured (dev/mm_exact_tiles.py, Zen 4): with AVX2's 16 ymm registers a
# tile of 8 x 2 would spill, so there mm_exact_batch keeps its loops (the tiles still give the
# same bits, and the tests call them on every machine)
TILES_FASTER = VEC_BYTES == 64
TILE_ROWS = 8          # most rows in a tile: 16 accumulators of 8 x 2 vectors, the rest for b and a
TILE_MIN_ROWS = 5      # mm_exact_batch tiles products of this many rows or more: tiles of 4..8 rows
_CONTRACT = ("contract",)


@intrinsic
def _at(typingctx, arr, i, j):
    """A typed pointer to arr[i, j] of a 2-D array (any layout; no bounds check)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 2):
        return None

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return cgutils.get_item_pointer(context, builder, sig.args[0], ary, [args[1], args[2]], wraparound=False)
    return types.CPointer(arr.dtype)(arr, i, j), codegen


def _make_tile(R: int, C: int):
    """An intrinsic tile(pa, lda, pb, ldb, pc, ldc, k): c[0:R, 0:C vectors] += a[0:R, 0:k] @
    b[0:k, 0:C vectors], through typed pointers and row strides in elements."""

    @intrinsic
    def tile(typingctx, pa, lda, pb, ldb, pc, ldc, k):
        if not (isinstance(pa, types.CPointer) and pa.dtype in (types.float32, types.float64)):
            return None
        fty = pa.dtype

        def codegen(context, builder, sig, args):
            pa, lda, pb, ldb, pc, ldc, kk = args
            size = fty.bitwidth // 8
            W = VEC_BYTES // size
            vt = ir.VectorType(context.get_value_type(fty), W)
            i64 = ir.IntType(64)

            def n(v):
                return ir.Constant(i64, v)

            def vec_at(p, row, ld, v):
                off = builder.add(builder.mul(row, ld), n(v * W))
                return builder.bitcast(builder.gep(p, [off]), vt.as_pointer())

            def splat(x):
                one = builder.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
                return builder.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                                              ir.Constant(ir.VectorType(ir.IntType(32), W), [0] * W))

            def a_at(r, col):
                return splat(builder.load(builder.gep(pa, [builder.add(builder.mul(n(r), lda), col)])))

            def phis(incoming):
                out = [[builder.phi(vt) for _ in range(C)] for _ in range(R)]
                for vals, block in incoming:
                    for r in range(R):
                        for v in range(C):
                            out[r][v].add_incoming(vals[r][v], block)
                return out

            grid = [(r, v) for r in range(R) for v in range(C)]

            def counted(block, start, stop, step, acc_in, came_from, leave_to, body):
                """The loop `block`: k from start while k < stop by step, the tile's accumulators
                carried in phis from acc_in (reaching it from came_from); body(k, acc) gives the
                new ones. Returns them and the block they come from."""
                builder.position_at_end(block)
                k = builder.phi(i64)
                acc = phis([(acc_in, came_from)])
                new = body(k, acc)
                k_next, end = builder.add(k, n(step)), builder.block
                k.add_incoming(start, came_from)
                k.add_incoming(k_next, end)
                for r, v in grid:
                    acc[r][v].add_incoming(new[r][v], end)
                builder.cbranch(builder.icmp_signed("<", k_next, stop), block, leave_to)
                return new, end

            def four(k, acc):
                """Four k at a time: the sum of four products, then added to c (mm_exact's expression)."""
                ys = [[builder.load(vec_at(pb, builder.add(k, n(j)), ldb, v), align=size) for v in range(C)]
                      for j in range(4)]
                new = [[None] * C for _ in range(R)]
                for r in range(R):
                    xs = [a_at(r, builder.add(k, n(j))) for j in range(4)]
                    for v in range(C):
                        p = [builder.fmul(xs[j], ys[j][v], flags=_CONTRACT) for j in range(4)]
                        s = builder.fadd(builder.fadd(builder.fadd(p[0], p[1], flags=_CONTRACT), p[2],
                                                      flags=_CONTRACT), p[3], flags=_CONTRACT)
                        new[r][v] = builder.fadd(acc[r][v], s, flags=_CONTRACT)
                return new

            def one(k, acc):
                """The k left over, one at a time: c + x y."""
                y = [builder.load(vec_at(pb, k, ldb, v), align=size) for v in range(C)]
                new = [[None] * C for _ in range(R)]
                for r in range(R):
                    x = a_at(r, k)
                    for v in range(C):
                        new[r][v] = builder.fadd(acc[r][v], builder.fmul(x, y[v], flags=_CONTRACT), flags=_CONTRACT)
                return new

            acc0 = [[builder.load(vec_at(pc, n(r), ldc, v), align=size) for v in range(C)] for r in range(R)]
            k4 = builder.and_(kk, n(-4))
            fn, entry = builder.function, builder.block
            b4, m4, b1, e1 = (fn.append_basic_block(s) for s in ("tile.k4", "tile.k4.end", "tile.k1", "tile.end"))
            builder.cbranch(builder.icmp_signed(">", k4, n(0)), b4, m4)
            new, end4 = counted(b4, n(0), k4, 4, acc0, entry, m4, four)

            builder.position_at_end(m4)
            mid = phis([(acc0, entry), (new, end4)])
            builder.cbranch(builder.icmp_signed("<", k4, kk), b1, e1)
            new1, end1 = counted(b1, k4, kk, 1, mid, m4, e1, one)

            builder.position_at_end(e1)
            fin = phis([(mid, m4), (new1, end1)])
            for r, v in grid:
                builder.store(fin[r][v], vec_at(pc, n(r), ldc, v), align=size)
            return context.get_dummy_value()
        return types.void(pa, lda, pb, ldb, pc, ldc, k), codegen
    return tile


_t4, _t5, _t6, _t7, _t8 = (_make_tile(r, 2) for r in range(4, 9))


@njit(inline="always", error_model="numpy")
def _tile(a, b, c, m, r, n0):
    """c[m:m+r, n0:n0+2 vectors] += a[m:m+r] @ b[:, n0:n0+2 vectors]; r in 4..8."""
    pa, pb, pc, k = _at(a, m, 0), _at(b, 0, n0), _at(c, m, n0), a.shape[1]
    sz = a.itemsize
    lda, ldb, ldc = a.strides[0] // sz, b.strides[0] // sz, c.strides[0] // sz
    if r == 8:
        _t8(pa, lda, pb, ldb, pc, ldc, k)
    elif r == 7:
        _t7(pa, lda, pb, ldb, pc, ldc, k)
    elif r == 6:
        _t6(pa, lda, pb, ldb, pc, ldc, k)
    elif r == 5:
        _t5(pa, lda, pb, ldb, pc, ldc, k)
    else:
        _t4(pa, lda, pb, ldb, pc, ldc, k)


@njit(inline="always", error_model="numpy")
def mm_exact_tiled(a, b, c):
    """c += a @ b in mm_exact's order for the columns that panels of two whole vectors cover;
    returns where they end (the caller sums the fewer than two vectors' columns after it: none
    for the served shapes, 4H with H a multiple of 8, and 64 of 65 characters). c has at least
    TILE_MIN_ROWS rows, cut into tiles of 4..8 rows of even size; every tile of a panel runs
    before the next panel, so the panel of b is read from memory once and from cache by the
    other tiles. Unit column strides (the caller's arrays are C-contiguous rows)."""
    M, N = c.shape
    sz = a.itemsize
    if M < TILE_MIN_ROWS or a.strides[1] != sz or b.strides[1] != sz or c.strides[1] != sz:
        raise ValueError("mm_exact_tiled: fewer than TILE_MIN_ROWS rows, or columns not contiguous")
    tiles = (M + TILE_ROWS - 1) // TILE_ROWS
    P = 2 * (VEC_BYTES // sz)
    n_wide = N - N % P
    for n0 in range(0, n_wide, P):
        for t in range(tiles):
            m0, m1 = M * t // tiles, M * (t + 1) // tiles
            _tile(a, b, c, m0, m1 - m0, n0)
    return n_wide
