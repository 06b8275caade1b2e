"""Update rules on one flat buffer: Adam, RMSProp, Adagrad, SGD with Nesterov momentum,
plus L2/L1 penalties and clipping. Each rule is one fused loop over the buffer; its state
(moments) shares the parameter layout and travels in the checkpoint.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

OPTIMIZERS = ("adam", "rmsprop", "adagrad", "nesterov")

# the usual defaults of each rule (Kingma & Ba; Tieleman & Hinton as in char-rnn; Duchi et al.; Sutskever et al.)
DEFAULTS = {
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "rmsprop": {"alpha": 0.95, "eps": 1e-8},
    "adagrad": {"eps": 1e-10},
    "nesterov": {"momentum": 0.9},
}
STATE_NAMES = {"adam": ("m", "v"), "rmsprop": ("sq",), "adagrad": ("sum",), "nesterov": ("vel",)}


@njit(cache=True, parallel=True)
def _penalties(w, g, l2, l1):
    for k in prange(w.size):
        g[k] += l2 * w[k] + l1 * (1.0 if w[k] > 0 else (-1.0 if w[k] < 0 else 0.0))


@njit(cache=True, parallel=True)
def _adam(w, g, m, v, lr, b1, b2, eps, t):
    c1 = 1.0 - b1 ** t
    c2 = 1.0 - b2 ** t
    for k in prange(w.size):
        m[k] = b1 * m[k] + (1.0 - b1) * g[k]
        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k]
        w[k] -= lr * (m[k] / c1) / (math.sqrt(v[k] / c2) + eps)


@njit(cache=True, parallel=True)
def _rmsprop(w, g, sq, lr, alpha, eps):
    for k in prange(w.size):
        sq[k] = alpha * sq[k] + (1.0 - alpha) * g[k] * g[k]
        w[k] -= lr * g[k] / (math.sqrt(sq[k]) + eps)


@njit(cache=True, parallel=True)
def _adagrad(w, g, s, lr, eps):
    for k in prange(w.size):
        s[k] += g[k] * g[k]
        w[k] -= lr * g[k] / (math.sqrt(s[k]) + eps)


@njit(cache=True, parallel=True)
def _nesterov(w, g, vel, lr, mu):
    # PyTorch's formulation: v = mu v + g;  w -= lr (g + mu v)
    for k in prange(w.size):
        vel[k] = mu * vel[k] + g[k]
        w[k] -= lr * (g[k] + mu * vel[k])


@njit(cache=True, parallel=True)
def _sumsq(g):
    # per-chunk partial sums in float64, then a fixed-order total: deterministic for any thread count
    n_chunks = 64
    part = np.zeros(n_chunks)
    size = (g.size + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        s = 0.0
        for k in range(c * size, min(g.size, (c + 1) * size)):
            s += float(g[k]) * float(g[k])
        part[c] = s
    return part.sum()


def grad_norm(g: np.ndarray) -> float:
    return math.sqrt(_sumsq(g))


def clip_(g: np.ndarray, mode: str, value: float) -> float:
    """Clip the flat gradient in place; returns the global L2 norm before clipping.
    mode 'norm': rescale to norm <= value; 'value': clamp each element to [-value, value]; 'none'."""
    norm = grad_norm(g)
    if mode == "norm" and norm > value and math.isfinite(norm):
        g *= g.dtype.type(value / norm)
    elif mode == "value":
        np.clip(g, -value, value, out=g)
    return norm


def parse_clip(spec: str) -> tuple[str, float]:
    """'norm:5' | 'value:5' | 'none' | a bare number (= norm:N)."""
    s = spec.strip().lower()
    if s in ("none", "0", "off"):
        return "none", 0.0
    mode, _, val = s.partition(":") if ":" in s else ("norm", "", s)
    if mode not in ("norm", "value"):
        raise ValueError(f"clip must be norm:X, value:X or none, not {spec!r}")
    try:
        v = float(val)
    except ValueError:
        raise ValueError(f"clip must be norm:X, value:X or none, not {spec!r}") from None
    if not v > 0 or not math.isfinite(v):
        raise ValueError("the clip threshold must be a positive number")
    return mode, v


class Optimizer:
    """One update rule with its hyperparameters and its state (flat arrays + step count)."""

    def __init__(self, name: str, size: int, dtype=np.float32, weight_decay: float = 0.0,
                 l1: float = 0.0, **hyper: float):
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")
        self.name = name
        self.hyper = {**DEFAULTS[name], **{k: float(v) for k, v in hyper.items() if v is not None}}
        unknown = set(self.hyper) - set(DEFAULTS[name])
        if unknown:
            raise ValueError(f"{name} has no hyperparameter {', '.join(sorted(unknown))}")
        self.weight_decay, self.l1 = float(weight_decay), float(l1)
        self.state = {k: np.zeros(size, dtype=dtype) for k in STATE_NAMES[name]}
        self.t = 0

    def step(self, w: np.ndarray, g: np.ndarray, lr: float) -> None:
        """One update of w in place from gradient g (g is modified by the penalties)."""
        if self.weight_decay or self.l1:
            _penalties(w, g, self.weight_decay, self.l1)
        self.t += 1
        h, s = self.hyper, self.state
        if self.name == "adam":
            _adam(w, g, s["m"], s["v"], lr, h["beta1"], h["beta2"], h["eps"], self.t)
        elif self.name == "rmsprop":
            _rmsprop(w, g, s["sq"], lr, h["alpha"], h["eps"])
        elif self.name == "adagrad":
            _adagrad(w, g, s["sum"], lr, h["eps"])
        else:
            _nesterov(w, g, s["vel"], lr, h["momentum"])

    def to_meta(self) -> dict:
        return {"name": self.name, "hyper": self.hyper, "weight_decay": self.weight_decay,
                "l1": self.l1, "t": self.t}

    @classmethod
    def from_meta(cls, meta: dict, size: int, dtype=np.float32) -> "Optimizer":
        opt = cls(meta["name"], size, dtype, meta.get("weight_decay", 0.0), meta.get("l1", 0.0),
                  **meta.get("hyper", {}))
        opt.t = int(meta.get("t", 0))
        return opt
