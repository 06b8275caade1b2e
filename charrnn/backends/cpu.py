"""CPU backend: NumPy's OpenBLAS for the products, Numba @njit kernels for everything else.

Per layer and window (DESIGN.md): the input projections of all T steps are one GEMM (a row
gather for one-hot input) before the time loop; the time loop itself (recurrent product and
gate math of every step) is one compiled call that drives BLAS from inside Numba; after the
backward time loop the weight gradients are again one GEMM each over the whole window. The
output softmax and cross-entropy are one fused kernel, and sampling runs every layer of one
LSTM step in a single compiled call. Work buffers are kept between calls of the same shape.
Works in float32 (training) and float64 (tests against reference.py). Threads: BLAS owns
the cores (CHARRNN_THREADS, see charrnn/__init__.py); the kernels run on the calling thread,
so results are bit-identical from run to run for a given thread count.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

import numpy as np

from charrnn import reference
from charrnn.backends import cpu_kernels as K
from charrnn.backends.cpu_kernels import SOFTSIGN, TANH
from charrnn.model import ModelConfig, Params, param_shapes, zero_state
from charrnn.optim import Optimizer, clip_

__all__ = ["CpuBackend", "TANH", "SOFTSIGN"]

# The recurrent products run transposed (cpu_kernels.lstm_forward) for narrow batches of wide
# layers. Training chars/s on this 2-core AVX-512 EPYC, plain -> transposed: 3x512 B32 8.4k ->
# 9.5k, 2x512 B64 15.1k -> 16.0k, 2x256 B32 38.8k -> 41.2k; but 1x256 B128 149k -> 116k and
# 2x128 B50 161k -> 127k, where the plain product is already efficient and the transposes cost.
TRANSPOSED_MIN_H, TRANSPOSED_MAX_B = 256, 64
SMALL_STEP_MACS = 1_000_000   # per-step recurrent products below this run on one BLAS thread


class CpuBackend:
    """The backend contract on the CPU (see charrnn/backends/__init__.py)."""

    name = "cpu"

    def __init__(self, cfg: ModelConfig, params: Params, notify: Callable[[str], None] | None = None):
        self._setup(cfg, params)
        self._notify = notify

    def _setup(self, cfg: ModelConfig, params: Params) -> None:
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
        self._notify = None

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
        a second thread costs more than it saves. With OpenBLAS's AVX-512 kernels, 2x128 at
        B=50 (3.3M multiply-adds a step) trains 1.15x faster on two threads than on one; on a
        busy machine every one of the window's 2T calls may wait for a descheduled thread."""
        H = self.cfg.hidden
        return 1 if B * H * self.cfg.gates * H < SMALL_STEP_MACS else 1 << 30

    def _transposed(self, B: int) -> bool:
        """Whether the recurrent products run transposed (see cpu_kernels.lstm_forward)."""
        return K.SMALL_M < B <= TRANSPOSED_MAX_B and self.cfg.hidden >= TRANSPOSED_MIN_H

    # -- forward over a window -------------------------------------------------------
    def _forward(self, x, state, masks, keep):
        if self.cfg.cell != "lstm":
            return self._forward_steps(x, state, masks, keep)
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
            out = hs[1:].reshape(T * B, H)
            if masks is not None:
                out = out * masks[l].reshape(T * B, H)
            inp = out
        logits = buf["logits"]
        np.dot(inp, p["out.W"], out=logits)
        K.add_bias(logits, p["out.b"])
        return logits, new_state, layers, inp

    def _forward_steps(self, x, state, masks, keep):
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
            out = hs[1:].reshape(T * B, H)
            if masks is not None:
                out = out * masks[l].reshape(T * B, H)
            inp = out
        logits = np.dot(inp, p["out.W"])
        K.add_bias(logits, p["out.b"])
        return logits, new_state, layers, inp

    def loss(self, x: np.ndarray, y: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        _warm_up(self, "loss")
        state = np.ascontiguousarray(state, dtype=self.dtype)
        logits, new_state, _, _ = self._forward(x, state, None, keep=False)
        loss = K.softmax_xent(logits, np.ascontiguousarray(y.reshape(-1), dtype=np.int64), 1.0, False)
        return float(loss), new_state

    def train_step(self, x: np.ndarray, y: np.ndarray, state: np.ndarray,
                   dropout_seed: int = 0) -> tuple[float, np.ndarray]:
        _warm_up(self, "train_step")
        cfg, p, g = self.cfg, self.p, self.grad
        T, B = x.shape
        H, dt = cfg.hidden, self.dtype
        masks = None
        if cfg.dropout > 0:
            masks = reference.dropout_masks(dropout_seed, (cfg.layers, T, B, H), cfg.dropout, dt)
        state = np.ascontiguousarray(state, dtype=dt)
        logits, new_state, layers, top = self._forward(x, state, masks, keep=True)
        codes = np.ascontiguousarray(x.reshape(-1), dtype=np.int64)
        loss = K.softmax_xent(logits, np.ascontiguousarray(y.reshape(-1), dtype=np.int64), 1.0 / (T * B), True)
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
            if masks is not None:
                K.mul_inplace(dinp, masks[l].reshape(T * B, H))
            if cfg.cell == "lstm":
                gates, cs, tcs, WhT = cc
                with K.blas_threads_at_most(self._step_threads(B)):
                    K.lstm_backward(dinp.reshape(T, B, H), Wh, WhT, cs, gates, tcs, self.kind, da,
                                    self._transposed(B))
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

    def generate(self, prime_codes: np.ndarray, length: int, temp: float = 1.0, seed: int | None = None,
                 top_k: int = 0, batch: int = 1, state: np.ndarray | None = None,
                 chunk: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """sample.stream's loop (temperature and top-k) in compiled chunks: yields (codes (batch,),
        log-probabilities) per step. Row i draws its uniforms from PCG64 seeded seed + i, as
        sample.stream does. `state` is the state after prime_codes[:-1] (zeros when None and the
        prime is one code; otherwise the prime is fed here). Chunks start short, so the first
        characters of a slow model show at once, and grow to `chunk`."""
        _warm_up(self, "generate")
        rngs = [np.random.default_rng((0 if seed is None else seed) + i) for i in range(batch)]
        prime = np.asarray(prime_codes, dtype=np.int64).reshape(-1)
        if state is None:
            state = self.zero_state(batch)
            for c in prime[:-1]:
                _, state = self.step(np.full(batch, c, np.int64), state)
        state = np.array(state, dtype=self.dtype, order="C")       # a copy: the loop writes it
        codes = np.full(batch, prime[-1], np.int64)
        logits = np.empty((batch, self.cfg.vocab_size), self.dtype)
        temp, top_k = float(temp), int(top_k)
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
        _warm_up(self, "optimizer_step")
        norm = clip_(self.grad.flat, clip[0], clip[1])
        opt.step(self.p.flat, self.grad.flat, lr)
        return norm

    def params_host(self) -> Params:
        return self.p

    def zero_state(self, batch: int) -> np.ndarray:
        return zero_state(self.cfg, batch, self.dtype)


_warmed: set = set()


def _warm_up(be: CpuBackend, path: str) -> None:
    """Before a path's first real call in this process, run it once on a tiny model so its
    kernels compile (or load from the on-disk cache) up front, and say so on stderr if that
    takes long instead of looking hung. Per path, so `charrnn sample` loads only what it uses."""
    key = (path, be.dtype.str, be.cfg.cell, be.cfg.embed > 0)
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
    from charrnn.optim import Optimizer as Opt
    tiny = MC(vocab_size=3, hidden=2, layers=2, cell=be.cfg.cell, embed=2 if be.cfg.embed else 0,
              dropout=0.5 if be.cfg.dropout else 0.0)
    tb = CpuBackend.__new__(CpuBackend)
    tb._setup(tiny, init_params(tiny, np.random.default_rng(0), be.dtype))
    x = np.zeros((2, 1), np.int64)
    if path == "train_step":
        tb.train_step(x, x, tb.zero_state(1))
    elif path == "loss":
        tb.loss(x, x, tb.zero_state(1))
    elif path == "step":
        tb.step(x[0], tb.zero_state(1))
    elif path == "generate":
        for _ in tb.generate(x[:, 0], 2, 1.0, 0, 1):
            pass
    else:
        for name in ("adam", "rmsprop", "adagrad", "nesterov"):
            tb.optimizer_step(Opt(name, tb.p.flat.size, be.dtype, weight_decay=1e-9), 0.0, ("norm", 1.0))
    done.set()
    if notify and time.perf_counter() - t0 > 0.7:
        notify(f"kernels ready ({time.perf_counter() - t0:.0f} s; cached for next time)")
