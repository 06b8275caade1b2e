"""Batch-1 LSTM kernels of the CPU backend: one stream of evaluation or sampling, where every
character reads every weight matrix once and the speed is bound by where those bytes sit.

- **16-bit weights** (`--weights bf16|f16` on `charrnn sample` and `charrnn eval`; never for
  training or the reference comparisons). `narrow` converts the whole parameter buffer once, at
  load, to 16-bit words in the buffer's own layout (so the offset tables index it as they index
  the float32 one): bfloat16 (round to nearest even) travels as uint16, IEEE half as int16. The
  backend keeps the float32 values of those words (`widen`) for everything that is not a
  per-step product (the window GEMMs of evaluation, the row gathers), so every path computes
  with the same 16-bit weights, and the per-step products read the 16-bit words (half the
  bytes) and widen them in registers (`_wide`: a shift into the high half and a bit cast for
  bf16, vcvtph2ps for f16). Sums are float32.
- **Persistent workers** (`run_parts`): the lanes of lanes.py each run one compiled call over a
  whole window (or a chunk of sampling steps), owning a fixed block of every layer's hidden
  units: the same columns of each gate block of Wx, Wh, so its share of the weights stays in
  its own cache from step to step. Workers meet at one spin barrier per layer step (`_arrive`:
  atomic add, then atomic loads with `pause`, and a sched_yield after a bounded spin, so a
  descheduled partner on a busy machine costs a time slice, not a hang), and a failed worker
  raises the abort word so the others leave their wait.
- Every product element is summed in one fixed order (c + (((x0 w0 + x1 w1) + x2 w2) + x3 w3)
  per four k, contraction into fused multiply-adds allowed, no reassociation), the same whichever
  worker computes it: sampling draws the same text on one worker or two.
"""
from __future__ import annotations

import ctypes
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from charrnn.backends import cpu_kernels as K
from charrnn.backends.cpu_kernels import (_call_cells, _cell_buffers, add_bias, draw_rows, gather_rows, gemm,
                                           softmax_xent)
from charrnn.backends.lanes import lanes

_EXACT = {"contract"}
SPIN = 2000               # barrier spins (each a `pause`) before each sched_yield
ABORT = 8                 # sync[ABORT], a cache line away from the counter at sync[0]
FIN = 16                  # sync[FIN + 8q]: the last phase whose units of worker q are done (evaluation), and
                          # sync[FIN + 8(parts + q)]: the last projection phase claimed for q's units, and
                          # sync[FIN + 8(2 parts + q)]: the last step phase worker q began itself


def line_aligned(shape: tuple[int, ...], dt) -> np.ndarray:
    """An empty array whose first element starts a cache line (NumPy's arrays start 16 bytes into
    one: every 64-byte load of a product then spans two lines, 1.1x the time of a packed block
    read from L2, and two workers' units of h and c share the line where they meet)."""
    item = np.dtype(dt).itemsize
    n = int(np.prod(shape))
    buf = np.empty(n + 64 // item, dt)
    off = (-buf.ctypes.data % 64) // item
    return buf[off:off + n].reshape(shape)


def sync_words(parts: int) -> np.ndarray:
    """The barrier's words for `parts` workers, each on a cache line of its own."""
    return np.zeros(FIN + 24 * parts, np.int64)


# ---------------------------------------------------------------- 16-bit weights
def narrow(flat: np.ndarray, fmt: str) -> np.ndarray:
    """The float32 buffer `flat` as 16-bit words: bf16 as uint16 (round to nearest even, NaN
    kept a NaN), f16 as int16 (the bits of np.float16). Raises ValueError where f16 would
    overflow (|w| > 65504)."""
    x = np.ascontiguousarray(flat, dtype=np.float32)
    if fmt == "f16":
        if x.size and float(np.max(np.abs(x))) > 65504.0:
            raise ValueError("weights beyond the f16 range (65504): use --weights bf16")
        return x.astype(np.float16).view(np.int16)
    if fmt != "bf16":
        raise ValueError(f"unknown 16-bit format {fmt!r}")
    u = x.view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    r[nan] = (u[nan] >> 16).astype(np.uint16) | 0x40        # a quiet NaN, whatever the low bits
    return r


def widen(words: np.ndarray) -> np.ndarray:
    """float32 values of narrow()'s words (exact: every 16-bit value is a float32)."""
    if words.dtype == np.int16:
        return words.view(np.float16).astype(np.float32)
    return (words.astype(np.uint32) << 16).view(np.float32)


@intrinsic
def _bf16_f32(typingctx, u):
    """A bfloat16 word (uint16) as float32: its bits in the high half of the float."""
    if u != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        v = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(v, ir.FloatType())
    return types.float32(u), codegen


@intrinsic
def _f16_f32(typingctx, u):
    """An IEEE half word (int16) as float32 (fpext; vcvtph2ps with F16C)."""
    if u != types.int16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(u), codegen


def _wide(w):
    """A weight as a float: float32 and float64 as they are, bf16 and f16 words widened."""


@overload(_wide, inline="always")
def _wide_impl(w):
    if w == types.uint16:
        return lambda w: _bf16_f32(w)
    if w == types.int16:
        return lambda w: _f16_f32(w)
    return lambda w: w


# ---------------------------------------------------------------- the barrier
def _word(context, builder, sig, args):
    """In an intrinsic's code: the address of arr[i], for arr, i = its first two arguments."""
    a = context.make_array(sig.args[0])(context, builder, args[0])
    return cgutils.get_item_pointer(context, builder, sig.args[0], a, [args[1]])


def _words(arr) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.int64


def _rmw(op: str):
    """The code of arr[i] = op(arr[i], v) atomically (acquire-release), returning the old value."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw(op, _word(context, builder, sig, args), v, "acq_rel")
    return codegen


@intrinsic
def _atomic_add(typingctx, arr, i, v):
    """arr[i] += v atomically (acquire-release); returns the old value. arr: int64, C."""
    return (types.int64(arr, i, v), _rmw("add")) if _words(arr) else None


@intrinsic
def _atomic_max(typingctx, arr, i, v):
    """arr[i] = max(arr[i], v) atomically (acquire-release); returns the old value. arr: int64, C."""
    return (types.int64(arr, i, v), _rmw("max")) if _words(arr) else None


@intrinsic
def _atomic_load(typingctx, arr, i):
    """arr[i], an acquiring atomic load. arr: int64, C."""
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_word(context, builder, sig, args), "acquire", 8)
    return (types.int64(arr, i), codegen) if _words(arr) else None


@intrinsic
def _cas(typingctx, arr, i, old, new):
    """arr[i] = new if arr[i] == old, atomically (acquire-release); True when it was. arr: int64, C."""
    def codegen(context, builder, sig, args):
        res = builder.cmpxchg(_word(context, builder, sig, args), context.cast(builder, args[2], sig.args[2], types.int64),
                              context.cast(builder, args[3], sig.args[3], types.int64), "acq_rel", "acquire")
        return builder.extract_value(res, 1)
    return (types.boolean(arr, i, old, new), codegen) if _words(arr) else None


@intrinsic
def _pause(typingctx):
    """The spin-wait hint (x86 `pause`); nothing elsewhere."""
    import platform

    def codegen(context, builder, sig, args):
        if platform.machine().lower() in ("x86_64", "amd64"):
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


def _find_yield() -> bool:
    try:
        import llvmlite.binding as ll
        fn = ctypes.CDLL(None).sched_yield
        ll.add_symbol("charrnn_sched_yield", ctypes.cast(fn, ctypes.c_void_p).value)
        return True
    except (OSError, AttributeError, TypeError):
        return False


if _find_yield():
    _sched_yield = types.ExternalFunction("charrnn_sched_yield", types.int32())
else:                                     # no sched_yield here: the spin keeps pausing
    @njit(inline="always")
    def _sched_yield():
        return 0


@njit(inline="always", error_model="numpy")
def _arrive(sync, target, spin):
    """Count this worker in and wait until sync[0] reaches `target` (every worker of this phase
    arrived). After `spin` pauses, yield the core between looks. False when a worker aborted."""
    _atomic_add(sync, 0, 1)
    n = 0
    while _atomic_load(sync, 0) < target:
        if _atomic_load(sync, ABORT) != 0:
            return False
        n += 1
        if n < spin:
            _pause()
        else:
            _sched_yield()
    return True


@njit(inline="always", error_model="numpy")
def _late(sync, parts, phase):
    """The first worker whose units of `phase` are not done (sync[FIN + 8q]), else -1."""
    for q in range(parts):
        if _atomic_load(sync, FIN + 8 * q) < phase:
            return q
    return -1


def part_bounds(part: int, parts: int, H: int) -> tuple[int, int]:
    """Worker `part`'s hidden units [j0, j1) of H, cut at multiples of 16 (a cache line of
    float32, one AVX-512 vector)."""
    blocks = (H + 15) // 16
    return min(H, blocks * part // parts * 16), min(H, blocks * (part + 1) // parts * 16)


_bounds = njit(inline="always")(part_bounds)


# ---------------------------------------------------------------- products on a block of columns
@njit(cache=True, nogil=True, fastmath=_EXACT, error_model="numpy")
def _gemv_cols(x, W, a, stride, j0, w, nb):
    """a[g*w + n] += x @ W[:, g*stride + j0 + n] for blocks g < nb and n < w, each element in
    the fixed order of the module's docstring. x (K,), W (K, N) of any weight type, a (nb*w,).
    Called, not inlined: the kernels call it at up to four places, each inlined copy compiled
    again (seconds on a cold cache), and a call per product costs nothing measurable."""
    Kd = x.shape[0]
    K4 = Kd - Kd % 4
    for k in range(0, K4, 4):            # views, indexed from 0 by the loop variable: an offset
        x0, x1, x2, x3 = x[k], x[k + 1], x[k + 2], x[k + 3]     # index would take Numba's
        for g in range(nb):                                      # negative-index check per element
            c0 = g * stride + j0
            ar = a[g * w:g * w + w]
            b0, b1, b2, b3 = W[k, c0:c0 + w], W[k + 1, c0:c0 + w], W[k + 2, c0:c0 + w], W[k + 3, c0:c0 + w]
            for n in range(w):
                ar[n] += x0 * _wide(b0[n]) + x1 * _wide(b1[n]) + x2 * _wide(b2[n]) + x3 * _wide(b3[n])
    for k in range(K4, Kd):
        xk = x[k]
        for g in range(nb):
            c0 = g * stride + j0
            ar = a[g * w:g * w + w]
            b0 = W[k, c0:c0 + w]
            for n in range(w):
                ar[n] += xk * _wide(b0[n])


@njit(inline="always", error_model="numpy")
def _part_buffers(part, parts, H, dt):
    """Worker `part`'s first unit j0, its width w, and its cell buffers: the gates a (1, 4w),
    c, h, act(c) (1, w) and _lstm_cells' work buffers."""
    j0, j1 = _bounds(part, parts, H)
    w = j1 - j0
    v, ww, q, ib = _cell_buffers(1, 4 * w, dt)
    return (j0, w, np.empty((1, 4 * w), dt), np.empty((1, w), dt), np.empty((1, w), dt), np.empty((1, w), dt),
            v, ww, q, ib)


# ---------------------------------------------------------------- evaluation: a window of one stream
@njit(inline="always", error_model="numpy")
def _proj_unit(q, parts, l, flat, offs, embed_off, embed, V, codes, hs, pre, x):
    """Worker q's columns of layer l's input projections over the window, into pre (no bias):
    a GEMM (x: a buffer for the embedded codes). Not for a one-hot first layer: its steps
    gather their rows of Wx themselves (_step_unit)."""
    H = hs.shape[2]
    G = pre.shape[1]
    j0, j1 = _bounds(q, parts, H)
    w = j1 - j0
    o_x = offs[l, 0]
    if l == 0:                                   # the embedded codes, once for the four gate blocks
        gather_rows(flat[embed_off:embed_off + V * embed].reshape(V, embed), codes, x)
    for g in range(4):
        c0 = g * H + j0
        if l == 0:
            gemm(x, flat[o_x:o_x + embed * G].reshape(embed, G)[:, c0:c0 + w], pre[:, c0:c0 + w], False, False, 0.0)
        else:
            gemm(hs[l - 1, 1:], flat[o_x:o_x + H * G].reshape(H, G)[:, c0:c0 + w], pre[:, c0:c0 + w],
                 False, False, 0.0)


@njit(inline="always", error_model="numpy")
def _step_unit(q, parts, l, t, hs, cs, pre, W, stride, bias, kind, cells, bufs, flat, row):
    """Step t of layer l for worker q's units: its gates from the input projection (pre[t], or
    with row >= 0 a one-hot input's row of Wx, flat[row:row + 4H], gathered here: no pass
    over the window writes and reads again a (T, 4H) buffer that would evict the packed weights
    from L2) and h = hs[l, t] by W (stride 0: q's own packed (H, 4w) block; stride H: all of
    Wh, q's columns read in place), the cell from c = cs[l, t], the results into hs, cs[l, t + 1].
    Each element's sum is the same whichever worker computes it, through either W, so the values
    written are the same bits: two workers may both compute a unit (a late one's, below) and
    write it twice."""
    H = hs.shape[2]
    j0, j1 = _bounds(q, parts, H)
    w = j1 - j0
    fa, fc, fh, ft, fv, fw, fq, fi = bufs
    a = fa[:4 * w].reshape(1, 4 * w)
    if row >= 0:
        for g in range(4):
            r = row + g * H + j0
            for n in range(w):
                a[0, g * w + n] = flat[r + n]
    else:
        for g in range(4):
            for n in range(w):
                a[0, g * w + n] = pre[t, g * H + j0 + n]
    _gemv_cols(hs[l, t], W, a[0], stride, j0 if stride else 0, w if stride else 4 * w, 4 if stride else 1)
    cn, hn = fc[:w].reshape(1, w), fh[:w].reshape(1, w)
    _call_cells(cells, a, bias[q, :4 * w], cs[l, t, j0:j1], kind, cn, ft[:w].reshape(1, w), hn,
                fv[:4 * w].reshape(1, 4 * w), fw[:w].reshape(1, w), fq[:4 * w], fi[:4 * w])
    for n in range(w):
        hs[l, t + 1, j0 + n] = hn[0, n]
        cs[l, t + 1, j0 + n] = cn[0, n]


@njit(cache=True, nogil=True, fastmath=_EXACT, error_model="numpy")
def lstm_window_part(part, parts, flat, wflat, offs, embed_off, embed, out_w, codes, ys, hs, cs, pre, logits,
                     losses, kind, cells, sync, spin, wp):
    """Worker `part` of `parts` over one window of one stream: T = len(codes) steps of every
    layer, then the loss of rows part*T//parts.. of the window. flat: the float32 (or float64)
    parameters; wflat: the same or narrow()'s words, read by the recurrent products; offs[l] =
    (Wx, Wh, b) offsets; hs, cs (L, T+1, H) hold the entering state at [:, 0] and get every
    step's; pre (T, 4H) and logits (T, V) are shared work buffers (each worker writes its own
    columns, then its own rows). losses (T,) gets each row's loss: the caller sums them in one
    order, so the total is the same for any number of workers. wp: this worker's own buffer of
    at least H * 4w words of wflat's type, where it copies its columns of each layer's Wh at the
    layer's start (with more than one worker), so that its per-step product reads one contiguous
    (H, 4w) block that stays in its core's L2, in rows of 4w, not four strided pieces of w (the
    pieces cost 2x in loop overhead at w = 128).

    The phases (per layer: the input projections, but for a one-hot first layer, whose steps
    gather their rows of Wx themselves, then each step) end when every worker's
    units are done (sync[FIN + 8q] >= the phase). A worker that waits there more than spin // 8
    pauses (at once, for a step, where the late worker began neither this step nor the one
    before: it is away) does the late worker's units itself: a projection after claiming it (sync[FIN +
    8(parts + q)]; a GEMM's transient partial sums must not be written twice), a step without claiming
    (_step_unit writes the same bits whoever computes it). So a partner descheduled on a busy
    machine costs a few microseconds a step, not a time slice; when it runs again it skips the
    phases already done (their units' flags say so) and takes its share again."""
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
    x = np.empty((T if embed_off >= 0 else 0, embed), dt)
    late = spin // 8
    phase = claimed = 0                          # claimed: the last projection phase (the claim words' value)
    for l in range(L):
        o_h, o_b = offs[l, 1], offs[l, 2]
        Wh = wflat[o_h:o_h + H * G].reshape(H, G)
        if parts > 1:                            # this worker's columns, contiguous (see wp above)
            Wp = wp[:H * 4 * w].reshape(H, 4 * w)
            for k in range(H):                   # by row slices: 1.4x faster than element by element
                src, dst = Wh[k], Wp[k]
                for g in range(4):
                    dst[g * w:g * w + w] = src[g * H + j0:g * H + j0 + w]
        else:                                    # one worker: its columns are Wh's, contiguous already
            Wp = Wh
        for q in range(parts):                   # every worker's biases, for the units it may do
            b0, b1 = _bounds(q, parts, H)
            for g in range(4):
                for n in range(b1 - b0):
                    bias[q, g * (b1 - b0) + n] = flat[o_b + g * H + b0 + n]
        onehot = l == 0 and embed_off < 0       # no projection phase: each step gathers its row
        for t in range(-1, T):                   # t = -1: the input projections' phase
            if t < 0 and onehot:
                continue
            phase += 1
            row = offs[l, 0] + codes[t] * G if onehot else -1
            if parts == 1:
                if t < 0:
                    _proj_unit(0, 1, l, flat, offs, embed_off, embed, V, codes, hs, pre, x)
                else:
                    _step_unit(0, 1, l, t, hs, cs, pre, Wp, 0, bias, kind, cells, bufs, flat, row)
                continue
            if t < 0:
                if _cas(sync, FIN + 8 * (parts + part), claimed, phase):
                    _proj_unit(part, parts, l, flat, offs, embed_off, embed, V, codes, hs, pre, x)
                    _atomic_max(sync, FIN + 8 * part, phase)
            elif _atomic_load(sync, FIN + 8 * part) < phase:    # not done for us while we were away
                _atomic_max(sync, FIN + 8 * (2 * parts + part), phase)
                _step_unit(part, parts, l, t, hs, cs, pre, Wp, 0, bias, kind, cells, bufs, flat, row)
                _atomic_max(sync, FIN + 8 * part, phase)
            n = 0
            while True:
                q = _late(sync, parts, phase)
                if q < 0:
                    break
                if _atomic_load(sync, ABORT) != 0:
                    return
                n += 1
                if t < 0 and n > late and _cas(sync, FIN + 8 * (parts + q), claimed, phase):
                    _proj_unit(q, parts, l, flat, offs, embed_off, embed, V, codes, hs, pre, x)
                    _atomic_max(sync, FIN + 8 * q, phase)
                elif t >= 0 and (n > late or _atomic_load(sync, FIN + 8 * (2 * parts + q)) < phase - 1):
                    _step_unit(q, parts, l, t, hs, cs, pre, Wh, H, bias, kind, cells, bufs, flat, row)  # (q away)
                    _atomic_max(sync, FIN + 8 * q, phase)
                    n = 0
                elif n < spin:
                    _pause()
                else:                            # a projection claimed by a worker that is away
                    _sched_yield()
            if t < 0:
                claimed = phase
    r0, r1 = T * part // parts, T * (part + 1) // parts
    if r1 > r0:
        lg = logits[r0:r1]
        gemm(hs[L - 1, 1 + r0:1 + r1], flat[out_w:out_w + H * V].reshape(H, V), lg, False, False, 0.0)
        add_bias(lg, flat[out_w + H * V:out_w + H * V + V])
        for r in range(r0, r1):
            losses[r] = softmax_xent(logits[r:r + 1], ys[r:r + 1], 1.0, False)


# ---------------------------------------------------------------- sampling: steps of one stream
@njit(cache=True, nogil=True, fastmath=_EXACT, error_model="numpy")
def lstm_generate_part(part, parts, flat, wflat, offs, embed_off, embed, out_w, code, hbuf, c, logits, u, temp,
                       top_k, out_codes, out_logp, kind, cells, sync, spin):
    """Worker `part` of `parts` over len(u) sampling steps of one stream (lstm_generate's, at
    batch 1): per step every layer's products on this worker's units, a barrier after each
    layer; then worker 0 computes the output layer and draws with u[s] (cpu_kernels.draw_rows),
    and every worker meets it at one more barrier to read the code. code (1,) holds the last
    code on entry and the newest on return; hbuf (2, L, H): h, the step's input in hbuf[0] on
    entry (double-buffered: a step reads one half and writes the other) and on return; c (L, H)
    the cell state; logits (1, V) worker 0's work buffer. wflat: narrow()'s words or flat itself."""
    L = c.shape[0]
    H = c.shape[1]
    G = 4 * H
    V = logits.shape[1]
    dt = flat.dtype
    j0, w, a, cn, hn, tc, v, ww, q, ib = _part_buffers(part, parts, H, dt)
    bl = np.empty((L, 4 * w), dt)
    cp = np.empty((L, 1, w), dt)
    x = np.empty(max(embed, 1), dt)
    for l in range(L):
        for g in range(4):
            for n in range(w):
                bl[l, g * w + n] = flat[offs[l, 2] + g * H + j0 + n]
        for n in range(w):
            cp[l, 0, n] = c[l, j0 + n]
    phase = 0
    for s in range(u.shape[0]):
        cur, nxt = s % 2, (s + 1) % 2
        for l in range(L):
            o_x, o_h = offs[l, 0], offs[l, 1]
            for i in range(4 * w):
                a[0, i] = 0.0
            if l == 0 and embed_off < 0:
                r = o_x + code[0] * G + j0
                for g in range(4):
                    for n in range(w):
                        a[0, g * w + n] = _wide(wflat[r + g * H + n])
            elif l == 0:
                r = embed_off + code[0] * embed
                for e in range(embed):
                    x[e] = flat[r + e]
                _gemv_cols(x[:embed], wflat[o_x:o_x + embed * G].reshape(embed, G), a[0], H, j0, w, 4)
            else:
                _gemv_cols(hbuf[nxt, l - 1], wflat[o_x:o_x + H * G].reshape(H, G), a[0], H, j0, w, 4)
            _gemv_cols(hbuf[cur, l], wflat[o_h:o_h + H * G].reshape(H, G), a[0], H, j0, w, 4)
            _call_cells(cells, a, bl[l], cp[l], kind, cn, tc, hn, v, ww, q, ib)
            for n in range(w):
                hbuf[nxt, l, j0 + n] = hn[0, n]
                cp[l, 0, n] = cn[0, n]
            if parts > 1:
                phase += 1
                if not _arrive(sync, parts * phase, spin):
                    return
        if part == 0:
            for k in range(V):
                logits[0, k] = 0.0
            _gemv_cols(hbuf[nxt, L - 1], wflat[out_w:out_w + H * V].reshape(H, V), logits[0], 0, 0, V, 1)
            for k in range(V):
                logits[0, k] += flat[out_w + H * V + k]
            draw_rows(logits, u[s], temp, top_k, out_codes[s], out_logp[s])
            code[0] = out_codes[s, 0]
        if parts > 1:
            phase += 1
            if not _arrive(sync, parts * phase, spin):
                return
    if u.shape[0] % 2:                         # the newest h back into hbuf[0]
        for l in range(L):
            for n in range(w):
                hbuf[0, l, j0 + n] = hbuf[1, l, j0 + n]
    for l in range(L):
        for n in range(w):
            c[l, j0 + n] = cp[l, 0, n]


# ---------------------------------------------------------------- the workers
def run_parts(parts: int, fn) -> None:
    """fn(part, sync) on `parts` lanes at once (lanes.py), BLAS on one thread in each; sync is
    the barrier's word array. A worker that fails raises the abort word, so the others leave
    their barrier, and the error reaches the caller."""
    sync = sync_words(parts)
    if parts == 1:
        with K.blas_threads_at_most(1):    # an idle BLAS thread would spin on the other core
            fn(0, sync)
        return

    def one(lane: int) -> None:
        try:
            fn(lane, sync)
        except BaseException:
            sync[ABORT] = 1
            raise
    with K.blas_threads_at_most(1):
        lanes(parts).run(one)


class Pick:
    """Which worker count runs the next call: `parts` or 1, by the speed each had in its last
    `keep` calls here (the median, so one call that lost a time slice does not switch: on an
    idle machine one window in a few lost half its speed to a partner descheduled once, and a
    choice by the last call alone then ran on one worker, 0.55x, for the next eight or more).
    Both give the same bits, so only the time depends on the choice: on a busy machine, where
    a partner descheduled at a barrier costs a time slice every step, one worker wins (5x
    at load 10 on 2 cores, bench/RESULTS.md), and the other count is tried again after `probe`
    calls, twice as many after each try it loses (up to 16x: a try costs one window, a wait too
    long keeps one worker for seconds after the machine got quiet), in case the machine got quiet."""

    def __init__(self, parts: int, probe: int = 8, keep: int = 3):
        self.parts, self.probe, self.wait, self.left, self.keep = parts, probe, probe, probe, keep
        self.rate: dict[int, float] = {}
        self._seen: dict[int, list[float]] = {}
        self._trying: int | None = None

    def next(self) -> int:
        for p in (self.parts, 1):
            if p not in self.rate:
                return p
        best = 1 if self.rate[1] > self.rate[self.parts] else self.parts     # a tie keeps every worker
        self.left -= 1
        if self.left <= 0:
            self.left = self.wait
            self._trying = 1 if best != 1 else self.parts
            return self._trying
        return best

    def record(self, parts: int, chars: int, seconds: float) -> None:
        seen = self._seen.setdefault(parts, [])
        seen.append(chars / max(seconds, 1e-9))
        del seen[:-self.keep]
        ranked = sorted(seen)                  # the median, without NumPy's 17 us a call (once a window)
        mid = len(ranked) // 2
        self.rate[parts] = rate = ranked[mid] if len(ranked) % 2 else (ranked[mid - 1] + ranked[mid]) / 2
        if parts == self._trying:
            self._trying = None
            other = max(r for p, r in self.rate.items() if p != parts)
            won = rate >= other
            self.wait = self.probe if won else min(2 * self.wait, 16 * self.probe)
            self.left = self.wait


class Batch1:
    """The batch-1 paths of one LSTM model on `parts` workers (evaluation always on all of them,
    `pick` only keeping their rates for reports; sampling on 1 or all, gen_pick choosing per call):
    `loss` over a window of one stream, `generate` over sampling steps. flat: the parameters
    (float32 or float64); words: narrow()'s 16-bit words of the same buffer, or None (the
    products read flat)."""

    def __init__(self, flat: np.ndarray, words: np.ndarray | None, offs: np.ndarray, embed_off: int, embed: int,
                 out_w: int, hidden: int, layers: int, vocab: int, kind: int, parts: int, spin: int = SPIN):
        self.flat, self.wflat = flat, flat if words is None else words
        self.offs, self.embed_off, self.embed, self.out_w = offs, embed_off, embed, out_w
        self.H, self.L, self.V, self.kind, self.parts, self.spin = hidden, layers, vocab, kind, parts, spin
        self.cells = K.lstm_cells_at(flat.dtype)
        self._bufs: dict = {}
        self.pick, self.gen_pick = Pick(parts), Pick(parts)
        self._pack: list = []

    def _packs(self, parts: int) -> list:
        """Each of `parts` workers' buffer for its columns of a recurrent matrix
        (lstm_window_part's wp), kept from call to call; empty for one worker."""
        if parts == 1:
            return [self.wflat[:0]]
        if len(self._pack) != parts:
            widths = [j1 - j0 for j0, j1 in (part_bounds(i, parts, self.H) for i in range(parts))]
            self._pack = [line_aligned((self.H * 4 * w,), self.wflat.dtype) for w in widths]
        return self._pack

    def loss(self, x: np.ndarray, y: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """CpuBackend.loss at B = 1: x, y (T, 1) codes and targets, state (L, 2, 1, H)."""
        T, H, L, dt = x.shape[0], self.H, self.L, self.flat.dtype
        bufs = self._bufs.get(T)
        if bufs is None:
            self._bufs.clear()                 # one window length kept (evaluation's, or a prime's)
            bufs = self._bufs[T] = (line_aligned((L, T + 1, H), dt), line_aligned((L, T + 1, H), dt),
                                    np.empty((T, 4 * H), dt), np.empty((T, self.V), dt))
        hs, cs, pre, logits = bufs
        hs[:, 0] = state[:, 0, 0]
        cs[:, 0] = state[:, 1, 0]
        codes = np.ascontiguousarray(x.reshape(-1), dtype=np.int64)
        ys = np.ascontiguousarray(y.reshape(-1), dtype=np.int64)
        losses = np.empty(T)
        # every worker, always: with the barrier's help a partner away costs about what one
        # worker alone would (lstm_window_part), while Pick's choice by a few windows' noisy
        # rates ran one worker for half the windows of a quiet machine (0.66x PyTorch, not 1.0x)
        parts = self.parts
        t0 = time.perf_counter()

        packs = self._packs(parts)

        def fn(part, sync):
            lstm_window_part(part, parts, self.flat, self.wflat, self.offs, self.embed_off, self.embed, self.out_w,
                             codes, ys, hs, cs, pre, logits, losses, self.kind, self.cells, sync, self.spin,
                             packs[part])
        run_parts(parts, fn)
        if self.parts > 1:
            self.pick.record(parts, T, time.perf_counter() - t0)
        new = np.empty_like(state)
        new[:, 0, 0] = hs[:, T]
        new[:, 1, 0] = cs[:, T]
        return float(np.sum(losses)), new

    def generate(self, code: np.ndarray, state: np.ndarray, u: np.ndarray, temp: float, top_k: int,
                 out_codes: np.ndarray, out_logp: np.ndarray) -> None:
        """len(u) steps of cpu_kernels.lstm_generate at batch 1: code (1,) and state
        (L, 2, 1, H) hold the last code and the state on entry and the newest on return."""
        hbuf = np.zeros((2, self.L, self.H), self.flat.dtype)
        hbuf[0] = state[:, 0, 0]
        c = np.ascontiguousarray(state[:, 1, 0])
        logits = np.empty((1, self.V), self.flat.dtype)
        parts = self.gen_pick.next() if self.parts > 1 else 1
        t0 = time.perf_counter()

        def fn(part, sync):
            lstm_generate_part(part, parts, self.flat, self.wflat, self.offs, self.embed_off, self.embed, self.out_w,
                               code, hbuf, c, logits, u, temp, top_k, out_codes, out_logp, self.kind, self.cells,
                               sync, self.spin)
        run_parts(parts, fn)
        if self.parts > 1:
            self.gen_pick.record(parts, len(u), time.perf_counter() - t0)
        state[:, 0, 0] = hbuf[0]
        state[:, 1, 0] = c
