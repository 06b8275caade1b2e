"""CPU backend: NumPy BLAS for the products, Numba @njit kernels for everything pointwise.

Per layer and window (DESIGN.md): the input projections of all T steps are one GEMM (a row
gather for one-hot input) before the time loop; each step does one recurrent product h @ Wh
and one fused gate kernel; after the backward time loop the weight gradients are again
one GEMM each over the whole window. Output softmax and cross-entropy are one fused kernel.
Works in float32 (training) and float64 (tests against reference.py).
"""
from __future__ import annotations

import math
import threading
import time
from typing import Callable

import numpy as np
from numba import njit, prange

from charrnn import reference
from charrnn.model import ModelConfig, Params, zero_state
from charrnn.optim import Optimizer, clip_

TANH, SOFTSIGN = 0, 1


# ---------------------------------------------------------------- scalar helpers (inlined)
@njit(inline="always", fastmath=True)
def _sig(a):
    return 1.0 / (1.0 + math.exp(-a))


@njit(inline="always", fastmath=True)
def _act(a, kind):
    if kind == TANH:
        return math.tanh(a)
    return a / (1.0 + abs(a))


@njit(inline="always", fastmath=True)
def _dact(y, kind):
    if kind == TANH:
        return 1.0 - y * y
    d = 1.0 - abs(y)
    return d * d


# ---------------------------------------------------------------- input side
@njit(cache=True, parallel=True)
def _gather_bias(W, b, codes, out):
    """out[n] = W[codes[n]] + b: the one-hot input product as a row gather."""
    for n in prange(codes.shape[0]):
        row = W[codes[n]]
        for j in range(out.shape[1]):
            out[n, j] = row[j] + b[j]


@njit(cache=True, parallel=True)
def _add_bias(out, b):
    for n in prange(out.shape[0]):
        for j in range(out.shape[1]):
            out[n, j] += b[j]


@njit(cache=True, parallel=True)
def _scatter_add_rows(G, codes, d):
    """G[codes[n]] += d[n]; parallel over columns so no two threads touch one element."""
    for j in prange(d.shape[1]):
        for n in range(codes.shape[0]):
            G[codes[n], j] += d[n, j]


@njit(cache=True, parallel=True)
def _colsum_add(g, d):
    for j in prange(d.shape[1]):
        s = 0.0
        for n in range(d.shape[0]):
            s += d[n, j]
        g[j] += s


# ---------------------------------------------------------------- LSTM
@njit(cache=True, parallel=True, fastmath=True)
def _lstm_fwd_step(xw, hw, c_prev, kind, gates, c, tc, h):
    B, H = c.shape
    for bi in prange(B):
        for j in range(H):
            i = _sig(xw[bi, j] + hw[bi, j])
            f = _sig(xw[bi, H + j] + hw[bi, H + j])
            g = _act(xw[bi, 2 * H + j] + hw[bi, 2 * H + j], kind)
            o = _sig(xw[bi, 3 * H + j] + hw[bi, 3 * H + j])
            cc = f * c_prev[bi, j] + i * g
            t = _act(cc, kind)
            gates[bi, j] = i
            gates[bi, H + j] = f
            gates[bi, 2 * H + j] = g
            gates[bi, 3 * H + j] = o
            c[bi, j] = cc
            tc[bi, j] = t
            h[bi, j] = o * t


@njit(cache=True, parallel=True, fastmath=True)
def _lstm_bwd_step(dh_out, dh_next, dc_next, gates, c_prev, tc, kind, da):
    """dh_next in, dc_next in/out; writes da (B, 4H). The caller forms dh_next = da @ Wh.T."""
    B, H = tc.shape
    for bi in prange(B):
        for j in range(H):
            i = gates[bi, j]
            f = gates[bi, H + j]
            g = gates[bi, 2 * H + j]
            o = gates[bi, 3 * H + j]
            dh = dh_out[bi, j] + dh_next[bi, j]
            dc = dc_next[bi, j] + dh * o * _dact(tc[bi, j], kind)
            da[bi, j] = dc * g * i * (1.0 - i)
            da[bi, H + j] = dc * c_prev[bi, j] * f * (1.0 - f)
            da[bi, 2 * H + j] = dc * i * _dact(g, kind)
            da[bi, 3 * H + j] = dh * tc[bi, j] * o * (1.0 - o)
            dc_next[bi, j] = dc * f


# ---------------------------------------------------------------- GRU
@njit(cache=True, parallel=True, fastmath=True)
def _gru_fwd_step(xw, hw, bh, h_prev, kind, gates, hn, h):
    B, H = h.shape
    for bi in prange(B):
        for j in range(H):
            r = _sig(xw[bi, j] + hw[bi, j])
            z = _sig(xw[bi, H + j] + hw[bi, H + j])
            q = hw[bi, 2 * H + j] + bh[j]
            n = _act(xw[bi, 2 * H + j] + r * q, kind)
            gates[bi, j] = r
            gates[bi, H + j] = z
            gates[bi, 2 * H + j] = n
            hn[bi, j] = q
            h[bi, j] = (1.0 - z) * n + z * h_prev[bi, j]


@njit(cache=True, parallel=True, fastmath=True)
def _gru_bwd_step(dh_out, dh_next, gates, hn, h_prev, kind, dxw, dhw, carry):
    """Writes dxw, dhw (B, 3H) and carry = dh * z, the direct path to h_prev."""
    B, H = h_prev.shape
    for bi in prange(B):
        for j in range(H):
            r = gates[bi, j]
            z = gates[bi, H + j]
            n = gates[bi, 2 * H + j]
            dh = dh_out[bi, j] + dh_next[bi, j]
            dan = dh * (1.0 - z) * _dact(n, kind)
            dar = dan * hn[bi, j] * r * (1.0 - r)
            daz = dh * (h_prev[bi, j] - n) * z * (1.0 - z)
            dxw[bi, j] = dar
            dxw[bi, H + j] = daz
            dxw[bi, 2 * H + j] = dan
            dhw[bi, j] = dar
            dhw[bi, H + j] = daz
            dhw[bi, 2 * H + j] = dan * r
            carry[bi, j] = dh * z


# ---------------------------------------------------------------- RNN
@njit(cache=True, parallel=True, fastmath=True)
def _rnn_fwd_step(xw, hw, kind, h):
    B, H = h.shape
    for bi in prange(B):
        for j in range(H):
            h[bi, j] = _act(xw[bi, j] + hw[bi, j], kind)


@njit(cache=True, parallel=True, fastmath=True)
def _rnn_bwd_step(dh_out, dh_next, h, kind, da):
    B, H = h.shape
    for bi in prange(B):
        for j in range(H):
            da[bi, j] = (dh_out[bi, j] + dh_next[bi, j]) * _dact(h[bi, j], kind)


# ---------------------------------------------------------------- output layer
@njit(cache=True, parallel=True, fastmath=True)
def _softmax_xent(logits, y, scale, want_grad):
    """Per-row loss -log softmax(logits)[y]; with want_grad, logits become scale*(p - onehot(y))."""
    N, V = logits.shape
    losses = np.empty(N)
    for n in prange(N):
        m = logits[n, 0]
        for k in range(1, V):
            m = max(m, logits[n, k])
        s = 0.0
        for k in range(V):
            s += math.exp(logits[n, k] - m)
        lse = m + math.log(s)
        losses[n] = lse - logits[n, y[n]]
        if want_grad:
            for k in range(V):
                logits[n, k] = math.exp(logits[n, k] - lse) * scale
            logits[n, y[n]] -= scale
    return losses.sum()


@njit(cache=True)
def _mul_inplace(a, m):
    a *= m


# ---------------------------------------------------------------- the backend
class CpuBackend:
    """The backend contract on the CPU (see charrnn/backends/__init__.py)."""

    name = "cpu"

    def __init__(self, cfg: ModelConfig, params: Params, notify: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.p = params
        self.grad = params.like()
        self.dtype = params.flat.dtype
        self.kind = TANH if cfg.activation == "tanh" else SOFTSIGN
        self._cache = None
        _warm_up(self.dtype, notify)

    # -- forward over a window -------------------------------------------------------
    def _forward(self, x, state, masks, keep):
        cfg, p = self.cfg, self.p
        T, B = x.shape
        H, dt = cfg.hidden, self.dtype
        codes = np.ascontiguousarray(x.reshape(-1)).astype(np.int64)
        new_state = np.empty_like(state)
        layers = []
        inp = None
        if cfg.embed:
            inp = np.empty((T * B, cfg.embed), dt)
            _gather_bias(p["embed"], np.zeros(cfg.embed, dt), codes, inp)
        for l in range(cfg.layers):
            Wx, Wh, b = p[f"l{l}.Wx"], p[f"l{l}.Wh"], p[f"l{l}.b"]
            GH = Wx.shape[1]
            xw = np.empty((T * B, GH), dt)
            if inp is None:
                _gather_bias(Wx, b, codes, xw)
            else:
                np.dot(inp, Wx, out=xw)
                _add_bias(xw, b)
            xw = xw.reshape(T, B, GH)
            hs = np.empty((T + 1, B, H), dt)
            hs[0] = state[l, 0]
            hw = np.empty((B, GH), dt)
            if cfg.cell == "lstm":
                gates = np.empty((T, B, GH), dt)
                cs = np.empty((T + 1, B, H), dt)
                tcs = np.empty((T, B, H), dt)
                cs[0] = state[l, 1]
                for t in range(T):
                    np.dot(hs[t], Wh, out=hw)
                    _lstm_fwd_step(xw[t], hw, cs[t], self.kind, gates[t], cs[t + 1], tcs[t], hs[t + 1])
                new_state[l, 1] = cs[T]
                cc = (gates, cs, tcs)
            elif cfg.cell == "gru":
                gates = np.empty((T, B, GH), dt)
                hn = np.empty((T, B, H), dt)
                bh = p[f"l{l}.bh"]
                for t in range(T):
                    np.dot(hs[t], Wh, out=hw)
                    _gru_fwd_step(xw[t], hw, bh, hs[t], self.kind, gates[t], hn[t], hs[t + 1])
                cc = (gates, hn)
            else:
                for t in range(T):
                    np.dot(hs[t], Wh, out=hw)
                    _rnn_fwd_step(xw[t], hw, self.kind, hs[t + 1])
                cc = None
            new_state[l, 0] = hs[T]
            if keep:
                layers.append((inp, hs, cc))
            out = hs[1:].reshape(T * B, H)
            if masks is not None:
                out = out * masks[l].reshape(T * B, H)
            inp = out
        logits = np.dot(inp, p["out.W"])
        _add_bias(logits, p["out.b"])
        return logits, new_state, layers, inp

    def loss(self, x: np.ndarray, y: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        logits, new_state, _, _ = self._forward(x, state.astype(self.dtype), None, keep=False)
        loss = _softmax_xent(logits, np.ascontiguousarray(y.reshape(-1)).astype(np.int64), 1.0, False)
        return float(loss), new_state

    def train_step(self, x: np.ndarray, y: np.ndarray, state: np.ndarray,
                   dropout_seed: int = 0) -> tuple[float, np.ndarray]:
        cfg, p, g = self.cfg, self.p, self.grad
        T, B = x.shape
        H, dt = cfg.hidden, self.dtype
        masks = None
        if cfg.dropout > 0:
            masks = reference.dropout_masks(dropout_seed, (cfg.layers, T, B, H), cfg.dropout, dt)
        logits, new_state, layers, top = self._forward(x, state.astype(dt), masks, keep=True)
        codes = np.ascontiguousarray(x.reshape(-1)).astype(np.int64)
        loss = _softmax_xent(logits, np.ascontiguousarray(y.reshape(-1)).astype(np.int64),
                             1.0 / (T * B), True)
        dlogits = logits
        g.flat[:] = 0
        g["out.W"][...] = np.dot(top.T, dlogits)
        _colsum_add(g["out.b"], dlogits)
        dinp = np.dot(dlogits, p["out.W"].T)
        for l in reversed(range(cfg.layers)):
            inp, hs, cc = layers[l]
            Wx, Wh = p[f"l{l}.Wx"], p[f"l{l}.Wh"]
            WhT = np.ascontiguousarray(Wh.T)
            GH = Wx.shape[1]
            if masks is not None:
                _mul_inplace(dinp, masks[l].reshape(T * B, H))
            dh_out = dinp.reshape(T, B, H)
            dh_next = np.zeros((B, H), dt)
            dxw = np.empty((T, B, GH), dt)
            if cfg.cell == "lstm":
                gates, cs, tcs = cc
                dc_next = np.zeros((B, H), dt)
                for t in range(T - 1, -1, -1):
                    _lstm_bwd_step(dh_out[t], dh_next, dc_next, gates[t], cs[t], tcs[t], self.kind, dxw[t])
                    np.dot(dxw[t], WhT, out=dh_next)
                dhw = dxw
            elif cfg.cell == "gru":
                gates, hn = cc
                dhw = np.empty((T, B, GH), dt)
                carry = np.empty((B, H), dt)
                for t in range(T - 1, -1, -1):
                    _gru_bwd_step(dh_out[t], dh_next, gates[t], hn[t], hs[t], self.kind, dxw[t], dhw[t], carry)
                    np.dot(dhw[t], WhT, out=dh_next)
                    dh_next += carry
                _colsum_add(g[f"l{l}.bh"], dhw[:, :, 2 * H:].reshape(T * B, H))
            else:
                for t in range(T - 1, -1, -1):
                    _rnn_bwd_step(dh_out[t], dh_next, hs[t + 1], self.kind, dxw[t])
                    np.dot(dxw[t], WhT, out=dh_next)
                dhw = dxw
            dxw2, dhw2 = dxw.reshape(T * B, GH), dhw.reshape(T * B, GH)
            g[f"l{l}.Wh"][...] = np.dot(hs[:-1].reshape(T * B, H).T, dhw2)
            _colsum_add(g[f"l{l}.b"], dxw2)
            if inp is None:
                _scatter_add_rows(g[f"l{l}.Wx"], codes, dxw2)
            else:
                g[f"l{l}.Wx"][...] = np.dot(inp.T, dxw2)
                dinp = np.dot(dxw2, Wx.T)
        if cfg.embed:
            _scatter_add_rows(g["embed"], codes, dinp)
        return float(loss), new_state

    # -- one step, for sampling ---------------------------------------------------------
    def step(self, codes: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, new_state, _, _ = self._forward(np.asarray(codes).reshape(1, -1), state.astype(self.dtype),
                                                None, keep=False)
        return logits, new_state

    # -- update ----------------------------------------------------------------------------
    def optimizer_step(self, opt: Optimizer, lr: float, clip: tuple[str, float]) -> float:
        norm = clip_(self.grad.flat, clip[0], clip[1])
        opt.step(self.p.flat, self.grad.flat, lr)
        return norm

    def params_host(self) -> Params:
        return self.p

    def zero_state(self, batch: int) -> np.ndarray:
        return zero_state(self.cfg, batch, self.dtype)


_warmed: set = set()


def _warm_up(dtype, notify) -> None:
    """Run every kernel once on tiny inputs so compilation (or loading the on-disk cache)
    happens up front; if that takes long, say so on stderr instead of looking hung."""
    key = np.dtype(dtype).str
    if key in _warmed:
        return
    done = threading.Event()

    def tell():
        if not done.wait(0.7) and notify:
            notify("compiling kernels, first run only...")

    watcher = threading.Thread(target=tell, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    from charrnn.model import ModelConfig as MC, init_params
    from charrnn.optim import Optimizer as Opt, clip_ as clip
    for cell in ("lstm", "gru", "rnn"):
        for kw in ({}, {"embed": 2}):
            cfg = MC(vocab_size=3, hidden=2, layers=1, cell=cell, **kw)
            be = CpuBackend.__new__(CpuBackend)
            be.cfg, be.p = cfg, init_params(cfg, np.random.default_rng(0), dtype)
            be.grad, be.dtype, be.kind, be._cache = be.p.like(), np.dtype(dtype), TANH, None
            x = np.zeros((2, 1), np.int64)
            be.train_step(x, x, be.zero_state(1))
            be.loss(x, x, be.zero_state(1))
            be.step(x[0], be.zero_state(1))
            for name in ("adam", "rmsprop", "adagrad", "nesterov"):
                Opt(name, be.p.flat.size, dtype, weight_decay=1e-9).step(be.p.flat, be.grad.flat, 0.0)
            clip(be.grad.flat, "norm", 1.0)
            _mul_inplace(be.grad.flat.reshape(1, -1), np.ones((1, be.grad.flat.size), dtype))
    done.set()
    _warmed.add(key)
    if notify and time.perf_counter() - t0 > 0.7:
        notify(f"kernels ready ({time.perf_counter() - t0:.0f} s; cached for next time)")
