"""CPU backend: NumPy's OpenBLAS for the products, Numba @njit kernels for everything else.

Per layer and window (DESIGN.md): the input projections of all T steps are one GEMM (a row
gather for one-hot input) before the time loop; the time loop itself (recurrent product and
gate math of every step) is one compiled call that drives BLAS from inside Numba; after the
backward time loop the weight gradients are again one GEMM each over the whole window. The
output softmax and cross-entropy are one fused kernel, and sampling runs every layer of one
LSTM step in a single compiled call. Work buffers are kept between calls of the same shape.
Works in float32 (training) and float64 (tests against reference.py).

Threads (CHARRNN_THREADS, see charrnn/__init__.py): a stacked LSTM with at least as many
layers as threads runs each window as a task graph on that many lanes (_lanes_window and
lanes.py), BLAS on one thread per lane; otherwise BLAS owns the cores and the kernels run
on the calling thread. Either way results are bit-identical from run to run for a given
thread count.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from charrnn.backends import cpu_kernels as K
from charrnn.backends.lanes import lanes, run_graph
from charrnn.backends.cpu_kernels import SOFTSIGN, TANH
from charrnn.model import ModelConfig, Params, param_shapes, zero_state
from charrnn.optim import Optimizer, clip_

if TYPE_CHECKING:
    from charrnn.sample import Decoding

__all__ = ["CpuBackend", "CpuTuning", "TANH", "SOFTSIGN"]


@dataclass(frozen=True)
class CpuTuning:
    """Sizes at which the backend switches between paths that compute the same thing, chosen by
    speed on a 2-core AVX-512 EPYC (measurements in bench/RESULTS.md, "CPU path thresholds").
    A backend holds one; tests pass their own to force a path on small shapes."""
    # the recurrent products run transposed (cpu_kernels.lstm_forward) for narrow batches of wide
    # layers; where the plain product is already efficient the transposes cost more than they save
    transposed_min_h: int = 256
    transposed_max_b: int = 64
    small_step_macs: int = 1_000_000     # per-step recurrent products below this run on one BLAS thread
    lanes: int | None = None             # lanes for stacked LSTMs: None chooses (CpuBackend._lane_count)
    lane_chunks: int = 8                 # a window splits into this many chunks of steps for the lanes,
    lane_end_chunk: float = 0.5          # the first and last this much shorter than the others
    # below these sizes the lanes' hand-offs (tens of microseconds a task) cost more than they save
    lanes_min_chunk_macs: int = 2_000_000    # recurrent multiply-adds of one layer over one chunk
    lanes_min_params: int = 500_000          # the optimizer splits its buffer over the lanes from this size


class CpuBackend:
    """The backend contract on the CPU (see charrnn/backends/__init__.py)."""

    name = "cpu"
    grad_on_host = True

    def __init__(self, cfg: ModelConfig, params: Params, notify: Callable[[str], None] | None = None,
                 tuning: CpuTuning = CpuTuning()):
        self.tuning = tuning
        self.cfg = cfg
        self.p = params
        self.grad = params.like()
        self.dtype = params.flat.dtype
        self.kind = TANH if cfg.activation == "tanh" else SOFTSIGN
        off, where = 0, {}
        for name, shape in param_shapes(cfg):
            where[name] = off
            off += int(np.prod(shape))
        self._offs = np.array([[where[f"l{l}.{n}"] for n in ("Wx", "Wh", "b")] for l in range(cfg.layers)],
                              dtype=np.int64)
        self._embed_off = where.get("embed", -1)
        self._out_off = where["out.W"]
        self._bufs: dict = {}
        self._notify = notify

    # -- work buffers, kept per window shape (the two most recent) -------------------------
    def _buffers(self, T: int, B: int) -> dict:
        key = (T, B)
        buf = self._bufs.pop(key, None)
        if buf is None:
            cfg, dt = self.cfg, self.dtype
            H, G, L = cfg.hidden, cfg.gates * cfg.hidden, cfg.layers
            buf = {"gates": [np.empty((T, B, G), dt) for _ in range(L)],
                   "hs": [np.empty((T + 1, B, H), dt) for _ in range(L)],
                   "cs": [np.empty((T + 1, B, H), dt) for _ in range(L)],
                   "tcs": [np.empty((T, B, H), dt) for _ in range(L)],
                   "logits": np.empty((T * B, cfg.vocab_size), dt),
                   "da": np.empty((T, B, G), dt), "dinp": np.empty((T * B, H), dt)}
            while len(self._bufs) >= 2:
                self._bufs.pop(next(iter(self._bufs)))
        self._bufs[key] = buf
        return buf

    def _step_threads(self, B: int) -> int:
        """BLAS threads for the per-step recurrent products: one for tiny products, where waking
        a second thread costs more than it saves (tuning.small_step_macs; bench/RESULTS.md); on
        a busy machine every one of the window's 2T calls may wait for a descheduled thread."""
        H = self.cfg.hidden
        return 1 if B * H * self.cfg.gates * H < self.tuning.small_step_macs else 1 << 30

    def _transposed(self, B: int) -> bool:
        """Whether the recurrent products run transposed (see cpu_kernels.lstm_forward)."""
        tu = self.tuning
        return K.SMALL_M < B <= tu.transposed_max_b and self.cfg.hidden >= tu.transposed_min_h

    def _lane_count(self) -> int:
        """Lanes for this model's windows (charrnn/backends/lanes.py): a stacked LSTM with at
        least as many layers as BLAS threads runs its layers side by side, one core each, with
        BLAS on one thread; otherwise one lane, and BLAS threads the products."""
        cfg = self.cfg
        if cfg.cell != "lstm" or cfg.layers < 2:
            return 1
        if self.tuning.lanes is not None:
            return self.tuning.lanes
        n = K.blas_threads()
        return n if 2 <= n <= cfg.layers else 1

    def _lanes_for(self, T: int, B: int) -> int:
        """Lanes for a window of T steps and B streams: _lane_count, unless the chunks are too
        small to pay for the hand-offs (lanes_min_chunk_macs). A lane count set in the tuning
        is taken without size checks."""
        H, tu = self.cfg.hidden, self.tuning
        if tu.lanes is None and T / min(T, tu.lane_chunks) * B * H * 4 * H < tu.lanes_min_chunk_macs:
            return 1
        return self._lane_count()

    def _lanes_for_update(self) -> int:
        if self.tuning.lanes is None and self.p.flat.size < self.tuning.lanes_min_params:
            return 1
        return self._lane_count()

    # -- forward over a window -------------------------------------------------------
    def _forward(self, x, state, drop, keep):
        if self.cfg.cell != "lstm":
            return self._forward_steps(x, state, drop, keep)
        cfg, p = self.cfg, self.p
        T, B = x.shape
        H = cfg.hidden
        buf = self._buffers(T, B)
        codes = np.ascontiguousarray(x.reshape(-1), dtype=np.int64)
        new_state = np.empty_like(state)
        layers = []
        inp = None
        if cfg.embed:
            inp = np.empty((T * B, cfg.embed), self.dtype)
            K.gather_rows(p["embed"], codes, inp)
        for l in range(cfg.layers):
            Wx, Wh, b = p[f"l{l}.Wx"], p[f"l{l}.Wh"], p[f"l{l}.b"]
            gates, hs, cs, tcs = buf["gates"][l], buf["hs"][l], buf["cs"][l], buf["tcs"][l]
            g2 = gates.reshape(T * B, -1)
            if inp is None:
                K.gather_rows(Wx, codes, g2)
            else:
                np.dot(inp, Wx, out=g2)
            hs[0] = state[l, 0]
            cs[0] = state[l, 1]
            transposed = self._transposed(B)
            WhT = np.ascontiguousarray(Wh.T) if keep or transposed else Wh   # the backward reuses it
            with K.blas_threads_at_most(self._step_threads(B)):
                K.lstm_forward(gates, b, Wh, WhT, hs, cs, tcs, self.kind, transposed)
            new_state[l, 0] = hs[T]
            new_state[l, 1] = cs[T]
            if keep:
                layers.append((inp, hs, (gates, cs, tcs, WhT)))
            inp = self._dropped(drop, hs[1:].reshape(T * B, H), l, T, B)
        logits = buf["logits"]
        np.dot(inp, p["out.W"], out=logits)
        K.add_bias(logits, p["out.b"])
        return logits, new_state, layers, inp

    def _forward_steps(self, x, state, drop, keep):
        """GRU and RNN: a Python loop over steps, one BLAS product and one kernel per step."""
        cfg, p = self.cfg, self.p
        T, B = x.shape
        H, dt = cfg.hidden, self.dtype
        codes = np.ascontiguousarray(x.reshape(-1), dtype=np.int64)
        new_state = np.empty_like(state)
        layers = []
        inp = None
        if cfg.embed:
            inp = np.empty((T * B, cfg.embed), dt)
            K.gather_rows(p["embed"], codes, inp)
        for l in range(cfg.layers):
            Wx, Wh, b = p[f"l{l}.Wx"], p[f"l{l}.Wh"], p[f"l{l}.b"]
            GH = Wx.shape[1]
            xw = np.empty((T * B, GH), dt)
            if inp is None:
                K.gather_bias(Wx, b, codes, xw)
            else:
                np.dot(inp, Wx, out=xw)
                K.add_bias(xw, b)
            xw = xw.reshape(T, B, GH)
            hs = np.empty((T + 1, B, H), dt)
            hs[0] = state[l, 0]
            hw = np.empty((B, GH), dt)
            if cfg.cell == "gru":
                gates = np.empty((T, B, GH), dt)
                hn = np.empty((T, B, H), dt)
                bh = p[f"l{l}.bh"]
                for t in range(T):
                    np.dot(hs[t], Wh, out=hw)
                    K.gru_fwd_step(xw[t], hw, bh, hs[t], self.kind, gates[t], hn[t], hs[t + 1])
                cc = (gates, hn)
            else:
                for t in range(T):
                    np.dot(hs[t], Wh, out=hw)
                    K.rnn_fwd_step(xw[t], hw, self.kind, hs[t + 1])
                cc = None
            new_state[l, 0] = hs[T]
            if keep:
                layers.append((inp, hs, cc))
            inp = self._dropped(drop, hs[1:].reshape(T * B, H), l, T, B)
        logits = np.dot(inp, p["out.W"])
        K.add_bias(logits, p["out.b"])
        return logits, new_state, layers, inp

    def _dropped(self, drop, out, l, T, B):
        """Layer l's output (T*B, H) with its dropout applied, in a buffer of its own (the
        backward reads it again), or `out` itself without dropout."""
        if drop is None:
            return out
        if self.cfg.cell == "lstm":          # the LSTM's window buffers are kept between calls
            buf = self._buffers(T, B)
            if "dropped" not in buf:
                buf["dropped"] = [np.empty_like(out) for _ in range(self.cfg.layers)]
            dst = buf["dropped"][l]
        else:
            dst = np.empty_like(out)
        self._drop(drop, out, dst, l, 0, T, B)
        return dst

    def _drop(self, drop, src, dst, l, t0, T, B):
        """dst = src * layer l's masks for steps t0.. of the window (src: whole steps' rows),
        hashed here and recorded in drop's `kept` for the backward (_drop_grad). drop = (seed,
        p, scale, kept, off, total): these B streams are streams off.. of a batch of total."""
        seed, p, scale, kept, off, total = drop
        r0 = t0 * B
        K.dropout_to(src, dst, kept[l, r0:r0 + src.shape[0]], seed, np.uint64(l * T + t0), B, total, off, p, scale)

    @staticmethod
    def _drop_grad(drop, d, l, t0, B):
        """d *= the masks _drop applied to layer l's rows from step t0 on."""
        r0 = t0 * B
        K.dropout_kept(d, drop[3][l, r0:r0 + d.shape[0]], drop[2])

    # -- a stacked LSTM's window on several lanes -------------------------------------------
    def _lanes_window(self, x, y, state, drop, train, n_lanes, total=None):
        """Forward (and with `train` the backward) of one window as a task graph on n_lanes
        lanes (charrnn/backends/lanes.py), the steps cut in chunks. Per chunk k and layer l:
          X(l)    Wh^T, contiguous, for transposed products and the backward
          P(l,k)  input projection of layer l (l >= 1)               after F(l-1,k)
          F(l,k)  time loop (layer 0 also gathers its input rows)    after P(l,k), F(l,k-1)
                  (and X(l) when the products run transposed)
          O(k)    output layer, softmax and cross-entropy, and with `train` its backward:
                  out.W's gradient and the gradient into layer L-1   after F(L-1,k), O(k-1)
          R(l,k)  backward time loop, chunks from last to first      after R(l,k+1) or X(l),
                                                                     and O(k) or D(l+1,k)
          D(l,k)  gradient into layer l-1 (l >= 1)                   after R(l,k)
          W(l)    weight gradients of layer l over the whole window (layer 0's in column
                  halves): nothing waits on them, so they fill idle lanes    after R(l,0)
        Free lanes take the deepest stage first: forward tasks by layer, then the backward from
        the top layer down, then W. Returns (loss sum, new state); gradients go to self.grad."""
        cfg, p, g = self.cfg, self.p, self.grad
        T, B = x.shape
        H, G, L, dt = cfg.hidden, 4 * cfg.hidden, cfg.layers, self.dtype
        buf = self._buffers(T, B)
        codes = np.ascontiguousarray(x.reshape(-1), dtype=np.int64)
        ys = np.ascontiguousarray(y.reshape(-1), dtype=np.int64)
        bounds = _chunk_bounds(T, self.tuning.lane_chunks, self.tuning.lane_end_chunk)
        n = len(bounds)
        rows = [(t0 * B, t1 * B) for t0, t1 in bounds]
        emb = None
        if cfg.embed:
            emb = np.empty((T * B, cfg.embed), dt)
            K.gather_rows(p["embed"], codes, emb)
        gates, hs, cs, tcs, logits = buf["gates"], buf["hs"], buf["cs"], buf["tcs"], buf["logits"]
        masked = [np.empty((T * B, H), dt) for _ in range(L)] if drop is not None else None
        outs = masked or [h[1:].reshape(T * B, H) for h in hs]          # what each layer passes up
        ins = [emb] + outs[:-1]                                           # layer 0's is None when one-hot
        transposed = self._transposed(B)
        for l in range(L):
            hs[l][0], cs[l][0] = state[l, 0], state[l, 1]
        WhT = [p[f"l{l}.Wh"] for l in range(L)]
        need_WhT = train or transposed
        if need_WhT:                                   # Wh^T, contiguous: made by tasks X(l)
            if "lane_WhT" not in buf:
                buf["lane_WhT"] = [np.empty((G, H), dt) for _ in range(L)]
            WhT = buf["lane_WhT"]
        losses = [0.0] * n
        scale = 1.0 / (T * (total or B))
        if train:
            if "lane_da" not in buf:
                buf["lane_da"] = [np.empty((T, B, G), dt) for _ in range(L)]
                buf["lane_dinp"] = [np.empty((T * B, H), dt) for _ in range(L)]
            da, dinp = buf["lane_da"], buf["lane_dinp"]
            dhc = np.zeros((L, 2, B, H), dt)
            for name in ("out.W", "out.b", "embed", "l0.Wx", *(f"l{l}.b" for l in range(L))):
                if name in g:                          # the ones added to, not assigned
                    g[name][...] = 0

        def proj(l, k):
            (t0, t1), (r0, r1) = bounds[k], rows[k]
            K.matmul(ins[l][r0:r1], p[f"l{l}.Wx"], gates[l][t0:t1].reshape(-1, G), False, False, 0.0)

        def fwd(l, k):
            (t0, t1), (r0, r1) = bounds[k], rows[k]
            if l == 0:
                g2 = gates[0][t0:t1].reshape(-1, G)
                if emb is None:
                    K.gather_rows(p["l0.Wx"], codes[r0:r1], g2)
                else:
                    K.matmul(emb[r0:r1], p["l0.Wx"], g2, False, False, 0.0)
            K.lstm_forward(gates[l][t0:t1], p[f"l{l}.b"], p[f"l{l}.Wh"], WhT[l], hs[l][t0:t1 + 1],
                           cs[l][t0:t1 + 1], tcs[l][t0:t1], self.kind, transposed)
            if drop is not None:
                self._drop(drop, hs[l][t0 + 1:t1 + 1].reshape(-1, H), masked[l][r0:r1], l, t0, T, B)

        def out(k):
            r0, r1 = rows[k]
            lg, top = logits[r0:r1], outs[L - 1][r0:r1]
            K.matmul(top, p["out.W"], lg, False, False, 0.0)
            K.add_bias(lg, p["out.b"])
            losses[k] = K.softmax_xent(lg, ys[r0:r1], scale, train)
            if train:                                  # lg now holds the logits' gradient
                K.matmul(top, lg, g["out.W"], True, False, 1.0)
                K.colsum_add(g["out.b"], lg)
                K.matmul(lg, p["out.W"], dinp[L - 1][r0:r1], False, True, 0.0)

        def bwd(l, k):
            (t0, t1), (r0, r1) = bounds[k], rows[k]
            d = dinp[l][r0:r1]
            if drop is not None:
                self._drop_grad(drop, d, l, t0, B)
            K.lstm_backward(d.reshape(-1, B, H), p[f"l{l}.Wh"], WhT[l], cs[l][t0:t1], gates[l][t0:t1],
                            tcs[l][t0:t1], self.kind, da[l][t0:t1], transposed, dhc[l, 0], dhc[l, 1], t0 > 0)
            K.colsum_add(g[f"l{l}.b"], da[l][t0:t1].reshape(-1, G))    # while the chunk is in cache
            if l == 0 and emb is not None:             # the embedding's gradient, in chunk order
                de = np.empty((r1 - r0, cfg.embed), dt)
                K.matmul(da[0][t0:t1].reshape(-1, G), p["l0.Wx"], de, False, True, 0.0)
                K.scatter_add_rows(g["embed"], codes[r0:r1], de)

        def down(l, k):
            (t0, t1), (r0, r1) = bounds[k], rows[k]
            K.matmul(da[l][t0:t1].reshape(-1, G), p[f"l{l}.Wx"], dinp[l - 1][r0:r1], False, True, 0.0)

        def wgrad(l, name, j, blocks):
            """Column block j of `blocks` of layer l's Wh or Wx gradient."""
            c0, c1 = j * G // blocks, (j + 1) * G // blocks
            d = da[l].reshape(T * B, G)[:, c0:c1]
            if name == "Wx" and l == 0 and emb is None:
                K.scatter_add_rows(g["l0.Wx"][:, c0:c1], codes, d)
            else:
                src = hs[l][:T].reshape(T * B, H) if name == "Wh" else ins[l]
                K.matmul(src, d, g[f"l{l}.{name}"][:, c0:c1], True, False, 0.0)

        tasks: list = []

        def add(fn, deps, prio):
            tasks.append((fn, [d for d in deps if d is not None], prio))
            return len(tasks) - 1

        X = [None] * L
        if need_WhT:
            for l in range(L):
                X[l] = add(partial(K.transpose, p[f"l{l}.Wh"], WhT[l]), [], (0, -l, -1) if transposed else (1, l))
        F = [[None] * n for _ in range(L)]
        O = [None] * n
        for k in range(n):
            for l in range(L):
                pk = add(partial(proj, l, k), [F[l - 1][k]], (0, -l, k)) if l > 0 else None
                first = X[l] if k == 0 and transposed else None
                F[l][k] = add(partial(fwd, l, k), [pk, first, F[l][k - 1] if k else None], (0, -l, k))
            O[k] = add(partial(out, k), [F[L - 1][k], O[k - 1] if k else None], (0, -L, k))
        if train:
            R = [[None] * n for _ in range(L)]
            for k in range(n - 1, -1, -1):
                above = O[k]
                for l in range(L - 1, -1, -1):
                    R[l][k] = add(partial(bwd, l, k), [above, R[l][k + 1] if k < n - 1 else X[l]],
                                  (0, -(2 * L - l), n - k))
                    if l > 0:
                        above = add(partial(down, l, k), [R[l][k]], (0, -(2 * L - l), n - k))
            for l in range(L - 1, -1, -1):
                for name in ("Wh", "Wx"):   # layer 0's are the last work of the window: halves, so both lanes share them
                    blocks = 2 if l == 0 and (name == "Wh" or emb is not None) else 1
                    for j in range(blocks):
                        add(partial(wgrad, l, name, j, blocks), [R[l][0]], (1, -l, j))
        with K.blas_threads_at_most(1):
            run_graph(lanes(n_lanes), tasks)
        new_state = np.empty_like(state)
        for l in range(L):
            new_state[l, 0], new_state[l, 1] = hs[l][T], cs[l][T]
        return sum(losses), new_state

    def loss(self, x: np.ndarray, y: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        n_lanes = self._lanes_for(*x.shape)
        _warm_up(self, "loss", n_lanes)
        state = np.ascontiguousarray(state, dtype=self.dtype)
        if n_lanes > 1:
            loss, new_state = self._lanes_window(x, y, state, None, False, n_lanes)
            return float(loss), new_state
        logits, new_state, _, _ = self._forward(x, state, None, keep=False)
        loss = K.softmax_xent(logits, np.ascontiguousarray(y.reshape(-1), dtype=np.int64), 1.0, False)
        return float(loss), new_state

    def train_step(self, x: np.ndarray, y: np.ndarray, state: np.ndarray, dropout_seed: int = 0,
                   streams: tuple[int, int] | None = None) -> tuple[float, np.ndarray]:
        cfg, p, g = self.cfg, self.p, self.grad
        T, B = x.shape
        total = streams[1] if streams else B
        n_lanes = self._lanes_for(T, B)
        _warm_up(self, "train_step", n_lanes)
        H, dt = cfg.hidden, self.dtype
        drop = None    # masks hashed where the forward applies them (charrnn/dropout.py), kept for the backward
        if cfg.dropout > 0:
            off = streams[0] if streams else 0
            drop = (np.uint64(dropout_seed), float(cfg.dropout), dt.type(1.0 / (1.0 - cfg.dropout)),
                    np.empty((cfg.layers, T * B, H), np.bool_), np.uint64(off), np.uint64(total))
        state = np.ascontiguousarray(state, dtype=dt)
        if n_lanes > 1:
            loss, new_state = self._lanes_window(x, y, state, drop, True, n_lanes, total)
            return float(loss), new_state
        logits, new_state, layers, top = self._forward(x, state, drop, keep=True)
        codes = np.ascontiguousarray(x.reshape(-1), dtype=np.int64)
        loss = K.softmax_xent(logits, np.ascontiguousarray(y.reshape(-1), dtype=np.int64), 1.0 / (T * total), True)
        dlogits = logits
        g.flat[:] = 0
        np.dot(top.T, dlogits, out=g["out.W"])
        K.colsum_add(g["out.b"], dlogits)
        if cfg.cell == "lstm":
            buf = self._buffers(T, B)
            da, dinp = buf["da"], buf["dinp"]
            da2 = da.reshape(T * B, 4 * H)
            np.dot(dlogits, p["out.W"].T, out=dinp)
        else:
            dinp = np.dot(dlogits, p["out.W"].T)
        for l in reversed(range(cfg.layers)):
            inp, hs, cc = layers[l]
            Wx, Wh = p[f"l{l}.Wx"], p[f"l{l}.Wh"]
            if drop is not None:
                self._drop_grad(drop, dinp, l, 0, B)
            if cfg.cell == "lstm":
                gates, cs, tcs, WhT = cc
                dhc = np.zeros((2, B, H), dt)
                with K.blas_threads_at_most(self._step_threads(B)):
                    K.lstm_backward(dinp.reshape(T, B, H), Wh, WhT, cs, gates, tcs, self.kind, da,
                                    self._transposed(B), dhc[0], dhc[1], False)
                dxw2 = dhw2 = da2
            else:
                dxw2, dhw2 = self._backward_steps(l, dinp.reshape(T, B, H), hs, cc)
            np.dot(hs[:-1].reshape(T * B, H).T, dhw2, out=g[f"l{l}.Wh"])
            K.colsum_add(g[f"l{l}.b"], dxw2)
            if inp is None:
                K.scatter_add_rows(g[f"l{l}.Wx"], codes, dxw2)
            else:
                np.dot(inp.T, dxw2, out=g[f"l{l}.Wx"])
                if l > 0 and cfg.cell == "lstm":
                    np.dot(dxw2, Wx.T, out=dinp)      # dinp is consumed: reuse it
                else:
                    dinp = np.dot(dxw2, Wx.T)
        if cfg.embed:
            K.scatter_add_rows(g["embed"], codes, dinp)
        return float(loss), new_state

    def _backward_steps(self, l, dh_out, hs, cc):
        """GRU and RNN backward time loop; returns the pre-activation gradients (input side,
        recurrent side) as (T*B, G*H) arrays."""
        cfg, p, dt = self.cfg, self.p, self.dtype
        T, B, H = dh_out.shape
        WhT = np.ascontiguousarray(p[f"l{l}.Wh"].T)
        GH = WhT.shape[0]
        dh_next = np.zeros((B, H), dt)
        dxw = np.empty((T, B, GH), dt)
        if cfg.cell == "gru":
            gates, hn = cc
            dhw = np.empty((T, B, GH), dt)
            carry = np.empty((B, H), dt)
            for t in range(T - 1, -1, -1):
                K.gru_bwd_step(dh_out[t], dh_next, gates[t], hn[t], hs[t], self.kind, dxw[t], dhw[t], carry)
                np.dot(dhw[t], WhT, out=dh_next)
                dh_next += carry
            K.colsum_add(self.grad[f"l{l}.bh"], dhw[:, :, 2 * H:].reshape(T * B, H))
        else:
            for t in range(T - 1, -1, -1):
                K.rnn_bwd_step(dh_out[t], dh_next, hs[t + 1], self.kind, dxw[t])
                np.dot(dxw[t], WhT, out=dh_next)
            dhw = dxw
        return dxw.reshape(T * B, GH), dhw.reshape(T * B, GH)

    def warm_up(self, T: int, B: int, opt: Optimizer) -> None:
        """Compile (or load from the cache) now every path a training run of T x B windows with
        optimizer `opt` takes."""
        _warm_up(self, "train_step", self._lanes_for(T, B))
        _warm_up(self, "optimizer_step", self._lanes_for_update(), opt)
        _warm_up(self, "loss", self._lanes_for(256, 1))
        _warm_up(self, "generate")

    # -- one step, for sampling ---------------------------------------------------------
    def step(self, codes: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _warm_up(self, "step")
        codes = np.ascontiguousarray(np.asarray(codes).reshape(-1), dtype=np.int64)
        state = np.ascontiguousarray(state, dtype=self.dtype)
        if self.cfg.cell != "lstm":
            logits, new_state, _, _ = self._forward(codes.reshape(1, -1), state, None, keep=False)
            return logits, new_state
        new_state = np.empty_like(state)
        logits = np.empty((codes.size, self.cfg.vocab_size), self.dtype)
        K.lstm_step(self.p.flat, self._offs, self._embed_off, self.cfg.embed, self._out_off,
                    codes, state, new_state, logits, self.kind)
        return logits, new_state

    def generate(self, prime_codes: np.ndarray, dec: Decoding, state: np.ndarray | None = None,
                 chunk: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """sample.stream's loop (temperature and top-k) in compiled chunks: yields (codes (batch,),
        log-probabilities) per step. Row i draws its uniforms from PCG64 seeded seed + i, as
        sample.stream does. `state` is the state after prime_codes[:-1] (zeros when None and the
        prime is one code; otherwise the prime is fed here). Chunks start short, so the first
        characters of a slow model show at once, and grow to `chunk`."""
        if not dec.own_loop_ok:
            raise ValueError("top-p and stop strings are drawn by sample.step_loop")
        _warm_up(self, "generate")
        length, batch = dec.length, dec.batch
        rngs = [np.random.default_rng(dec.seed + i) for i in range(batch)]
        prime = np.asarray(prime_codes, dtype=np.int64).reshape(-1)
        if state is None:
            state = self.zero_state(batch)
            for c in prime[:-1]:
                _, state = self.step(np.full(batch, c, np.int64), state)
        state = np.array(state, dtype=self.dtype, order="C")       # a copy: the loop writes it
        codes = np.full(batch, prime[-1], np.int64)
        logits = np.empty((batch, self.cfg.vocab_size), self.dtype)
        temp, top_k = float(dec.temperature), int(dec.top_k)
        n, size = 0, 8
        while length == 0 or n < length:
            steps = size if length == 0 else min(size, length - n)
            u = np.empty((steps, batch))
            for i, r in enumerate(rngs):
                u[:, i] = r.random(steps)
            out_codes = np.empty((steps, batch), np.int64)
            out_logp = np.empty((steps, batch))
            if self.cfg.cell == "lstm":
                K.lstm_generate(self.p.flat, self._offs, self._embed_off, self.cfg.embed, self._out_off, codes,
                                state, logits, self.kind, u, temp, top_k, out_codes, out_logp)
            else:
                for s in range(steps):
                    lg, state = self.step(codes, state)
                    K.draw_rows(lg, u[s], temp, top_k, out_codes[s], out_logp[s])
                    codes = out_codes[s].copy()
            yield from zip(out_codes, out_logp)
            n += steps
            size = min(2 * size, chunk)

    # -- update ----------------------------------------------------------------------------
    def optimizer_step(self, opt: Optimizer, lr: float, clip: tuple[str, float]) -> float:
        n, run = self._lanes_for_update(), None
        _warm_up(self, "optimizer_step", n, opt)
        if n > 1:                   # the lanes split the buffer; the result is the same either way
            pool = lanes(n)
            run = lambda jobs: run_graph(pool, [(job, [], (0,)) for job in jobs])   # noqa: E731
        norm = clip_(self.grad.flat, clip[0], clip[1], run, n)
        opt.step(self.p.flat, self.grad.flat, lr, run, n)
        return norm

    def params_host(self) -> Params:
        return self.p

    def grad_host(self) -> Params:
        return self.grad

    def zero_state(self, batch: int) -> np.ndarray:
        return zero_state(self.cfg, batch, self.dtype)


def _chunk_bounds(T: int, n: int, end: float) -> list[tuple[int, int]]:
    """Split T steps into min(n, T) chunks, the first and last `end` times as long as the
    others: a window's graph starts on its first chunk and turns from forward to backward on
    its last, and one lane waits meanwhile."""
    n = min(n, T)
    w = [1.0] * n
    if n > 2:
        w[0] = w[-1] = end
    total, acc, cuts = sum(w), 0.0, [0]
    for i in range(n - 1):
        acc += w[i]
        cuts.append(min(max(int(acc / total * T + 0.5), cuts[-1] + 1), T - (n - 1 - i)))
    cuts.append(T)
    return list(zip(cuts, cuts[1:]))


_warmed: set = set()


def _warm_up(be: CpuBackend, path: str, n_lanes: int = 1, opt: Optimizer | None = None) -> None:
    """Before a path's first real call in this process, run it once on a tiny model so its
    kernels compile (or load from the on-disk cache) up front, and say so on stderr if that
    takes long instead of looking hung. Per path, dtype, cell and (for an update) optimizer and
    penalties, so a command compiles only what it uses: on a cold cache every kernel left out
    is seconds saved. n_lanes: the lanes the real call will use (the tiny model takes the same path)."""
    rule = (opt.name, bool(opt.weight_decay or opt.l1)) if opt is not None else None
    key = (path, be.dtype.str, be.cfg.cell, be.cfg.embed > 0, n_lanes > 1, rule)
    if key in _warmed:
        return
    _warmed.add(key)                   # first, so the tiny model's own calls do not recurse
    notify = be._notify
    done = threading.Event()

    def tell():
        if not done.wait(0.7) and notify:
            notify("compiling kernels, first run only...")

    watcher = threading.Thread(target=tell, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    from charrnn.model import ModelConfig as MC, init_params
    tiny = MC(vocab_size=3, hidden=2, layers=min(be.cfg.layers, 4), cell=be.cfg.cell, embed=2 if be.cfg.embed else 0,
              dropout=0.5 if be.cfg.dropout else 0.0)
    tb = CpuBackend(tiny, init_params(tiny, np.random.default_rng(0), be.dtype),
                    tuning=replace(be.tuning, lanes=n_lanes))
    x = np.zeros((2, 1), np.int64)
    if path == "train_step":
        tb.train_step(x, x, tb.zero_state(1))
    elif path == "loss":
        tb.loss(x, x, tb.zero_state(1))
    elif path == "step":
        tb.step(x[0], tb.zero_state(1))
    elif path == "generate":
        from charrnn.sample import Decoding
        for _ in tb.generate(x[:, 0], Decoding(length=2, top_k=1)):
            pass
    else:
        tb.optimizer_step(Optimizer(opt.name, tb.p.flat.size, be.dtype, weight_decay=1e-9 if rule[1] else 0.0),
                          0.0, ("norm", 1.0))
    done.set()
    if notify and time.perf_counter() - t0 > 0.7:
        notify(f"kernels ready ({time.perf_counter() - t0:.0f} s; cached for next time)")
