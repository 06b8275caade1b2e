"""Update rules on one flat buffer: Adam, AdamW, RMSProp, Adagrad, Adadelta, SGD (plain or with
heavy-ball momentum) and SGD with Nesterov momentum, plus L2/L1 penalties and clipping. Each rule is one fused loop over the buffer; its state
(moments) shares the parameter layout and travels in the checkpoint. The loops are serial
and release the GIL: a caller with threads of its own (CpuBackend's lanes) passes `run`,
and each thread updates a slice. Every rule is elementwise and the norm sums fixed chunks
in a fixed order, so the result is the same however the buffer is split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

from charrnn.options import OPTIMIZER_DEFAULTS, TrainOptions

DEFAULTS = OPTIMIZER_DEFAULTS    # each rule's hyperparameters and their usual values (options.py)


@njit(cache=True, nogil=True, error_model="numpy")
def _penalties(w, g, l2, l1):
    for k in range(w.size):
        g[k] += l2 * w[k] + l1 * (1.0 if w[k] > 0 else (-1.0 if w[k] < 0 else 0.0))


@njit(cache=True, nogil=True, error_model="numpy")
def _adam(w, g, m, v, lr, b1, b2, eps, t):
    c1 = 1.0 - b1 ** t
    c2 = 1.0 - b2 ** t
    for k in range(w.size):
        m[k] = b1 * m[k] + (1.0 - b1) * g[k]
        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k]
        w[k] -= lr * (m[k] / c1) / (math.sqrt(v[k] / c2) + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def _adamw(w, g, m, v, lr, b1, b2, eps, t, wd):
    # Loshchilov & Hutter, as PyTorch's AdamW: the decay scales the weight by (1 - lr wd) and
    # never enters the moments
    c1 = 1.0 - b1 ** t
    c2 = 1.0 - b2 ** t
    for k in range(w.size):
        w[k] -= lr * wd * w[k]
        m[k] = b1 * m[k] + (1.0 - b1) * g[k]
        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k]
        w[k] -= lr * (m[k] / c1) / (math.sqrt(v[k] / c2) + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def _rmsprop(w, g, sq, lr, alpha, eps):
    for k in range(w.size):
        sq[k] = alpha * sq[k] + (1.0 - alpha) * g[k] * g[k]
        w[k] -= lr * g[k] / (math.sqrt(sq[k]) + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def _adagrad(w, g, s, lr, eps):
    for k in range(w.size):
        s[k] += g[k] * g[k]
        w[k] -= lr * g[k] / (math.sqrt(s[k]) + eps)


@njit(cache=True, nogil=True, error_model="numpy")
def _adadelta(w, g, sq, delta, lr, rho, eps):
    # Zeiler 2012: the step is g scaled by RMS(past steps) / RMS(gradients); lr (1 in the paper)
    # multiplies it, as in PyTorch
    for k in range(w.size):
        sq[k] = rho * sq[k] + (1.0 - rho) * g[k] * g[k]
        d = math.sqrt(delta[k] + eps) / math.sqrt(sq[k] + eps) * g[k]
        delta[k] = rho * delta[k] + (1.0 - rho) * d * d
        w[k] -= lr * d


@njit(cache=True, nogil=True, error_model="numpy")
def _sgd(w, g, vel, lr, mu):
    # heavy-ball momentum in PyTorch's form: v = mu v + g;  w -= lr v (mu = 0: plain SGD, v = g)
    for k in range(w.size):
        vel[k] = mu * vel[k] + g[k]
        w[k] -= lr * vel[k]


@njit(cache=True, nogil=True, error_model="numpy")
def _nesterov(w, g, vel, lr, mu):
    # PyTorch's formulation: v = mu v + g;  w -= lr (g + mu v)
    for k in range(w.size):
        vel[k] = mu * vel[k] + g[k]
        w[k] -= lr * (g[k] + mu * vel[k])


@dataclass(frozen=True)
class Rule:
    """One update rule, for both devices. Its kernels (`cpu` here, the one named `cuda` in
    backends/cuda_optim.py) take (w, g, *state arrays, *scalars(...)): the state in `state`'s
    order, then the rate and the hyperparameters in `hyper`'s order, then Adam's step count
    (CPU) or bias corrections (GPU), then a decoupled weight decay."""
    state: tuple[str, ...]          # the state arrays, each in the parameters' layout
    hyper: tuple[str, ...]          # the hyperparameters the kernels take (DEFAULTS[name]'s keys)
    cpu: Callable                   # the @njit loop
    cuda: str                       # the kernel's name in backends/cuda_optim.py
    bias_corrected: bool = False    # Adam's moments: corrected by 1 - beta^t
    decoupled: bool = False         # the weight decay shrinks the weights in the rule, not as an L2 gradient

    def scalars(self, opt: "Optimizer", lr: float, corrections: bool) -> tuple:
        """The kernels' scalar arguments for `opt` at rate lr. corrections: Adam's bias
        corrections 1 - beta1^t and 1 - beta2^t computed here (the GPU's kernels take them so),
        rather than the step count t (the CPU's compute them)."""
        h = opt.hyper
        out = (lr, *(h[k] for k in self.hyper))
        if self.bias_corrected:
            out += (1.0 - h["beta1"] ** opt.t, 1.0 - h["beta2"] ** opt.t) if corrections else (opt.t,)
        if self.decoupled:
            out += (opt.weight_decay,)
        return out


RULES = {
    "adam": Rule(("m", "v"), ("beta1", "beta2", "eps"), _adam, "adam", bias_corrected=True),
    "adamw": Rule(("m", "v"), ("beta1", "beta2", "eps"), _adamw, "adamw", bias_corrected=True, decoupled=True),
    "rmsprop": Rule(("sq",), ("alpha", "eps"), _rmsprop, "rmsprop"),
    "adagrad": Rule(("sum",), ("eps",), _adagrad, "adagrad"),
    "adadelta": Rule(("sq", "delta"), ("rho", "eps"), _adadelta, "adadelta"),
    "sgd": Rule(("vel",), ("momentum",), _sgd, "sgd"),
    "nesterov": Rule(("vel",), ("momentum",), _nesterov, "nesterov"),
}
OPTIMIZERS = tuple(RULES)
STATE_NAMES = {name: rule.state for name, rule in RULES.items()}   # what a checkpoint may hold per rule


SUMSQ_CHUNKS = 64


@njit(cache=True, nogil=True, error_model="numpy")
def _sumsq_parts(g, part, c0, c1):
    """part[c] = the float64 sum of squares of chunk c of g (SUMSQ_CHUNKS equal chunks), c0 <= c < c1."""
    size = (g.size + part.size - 1) // part.size
    acc = np.zeros(8)                  # eight running sums: independent adds, summed in a fixed order
    for c in range(c0, c1):
        a, b = c * size, min(g.size, (c + 1) * size)
        acc[:] = 0.0
        k = a
        while k + 8 <= b:
            for i in range(8):
                acc[i] += float(g[k + i]) * float(g[k + i])
            k += 8
        for j in range(k, b):
            acc[0] += float(g[j]) * float(g[j])
        part[c] = acc.sum()


@njit(cache=True, nogil=True, error_model="numpy")
def _scale(g, f):
    for k in range(g.size):
        g[k] *= f


@njit(cache=True, nogil=True, error_model="numpy")
def _clamp(g, v):
    for k in range(g.size):          # NaN stays NaN, as with np.clip
        if g[k] > v:
            g[k] = v
        elif g[k] < -v:
            g[k] = -v


Runner = Callable[[list], None]    # runs a list of no-argument callables, perhaps at once


def _serially(jobs: list) -> None:
    for job in jobs:
        job()


def _cuts(n: int, parts: int) -> list[tuple[int, int]]:
    return [(i * n // parts, (i + 1) * n // parts) for i in range(parts)]


def grad_norm(g: np.ndarray, run: Runner | None = None, parts: int = 1) -> float:
    part = np.zeros(SUMSQ_CHUNKS)
    (run or _serially)([lambda a=a, b=b: _sumsq_parts(g, part, a, b) for a, b in _cuts(SUMSQ_CHUNKS, parts)])
    return math.sqrt(part.sum())


def clip_(g: np.ndarray, mode: str, value: float, run: Runner | None = None, parts: int = 1) -> float:
    """Clip the flat gradient in place; returns the global L2 norm before clipping.
    mode 'norm': rescale to norm <= value; 'value': clamp each element to [-value, value]; 'none'.
    `run` and `parts`: split the work in that many slices and hand them to run."""
    norm = grad_norm(g, run, parts)
    if mode == "norm" and norm > value and math.isfinite(norm):
        f = g.dtype.type(value / norm)
        (run or _serially)([lambda a=a, b=b: _scale(g[a:b], f) for a, b in _cuts(g.size, parts)])
    elif mode == "value":
        v = g.dtype.type(value)
        (run or _serially)([lambda a=a, b=b: _clamp(g[a:b], v) for a, b in _cuts(g.size, parts)])
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
        self.state = {k: np.zeros(size, dtype=dtype) for k in RULES[name].state}
        self.t = 0

    def step(self, w: np.ndarray, g: np.ndarray, lr: float, run: Runner | None = None, parts: int = 1) -> None:
        """One update of w in place from gradient g (g is modified by the penalties); with
        `run`, in `parts` slices handed to it (see clip_)."""
        self.t += 1
        (run or _serially)([lambda a=a, b=b: self._update(w, g, lr, a, b) for a, b in _cuts(w.size, parts)])

    def _update(self, w: np.ndarray, g: np.ndarray, lr: float, a: int, b: int) -> None:
        w, g = w[a:b], g[a:b]
        l2 = self.coupled_l2
        if l2 or self.l1:
            _penalties(w, g, l2, self.l1)
        rule = RULES[self.name]
        rule.cpu(w, g, *(self.state[k][a:b] for k in rule.state), *rule.scalars(self, lr, corrections=False))

    @property
    def coupled_l2(self) -> float:
        """The L2 coefficient added to the gradient (0 for a rule whose decay is decoupled)."""
        return 0.0 if RULES[self.name].decoupled else self.weight_decay

    def to_meta(self) -> dict:
        return {"name": self.name, "hyper": self.hyper, "weight_decay": self.weight_decay,
                "l1": self.l1, "t": self.t}

    @classmethod
    def from_meta(cls, meta: dict, size: int, dtype=np.float32) -> "Optimizer":
        opt = cls(meta["name"], size, dtype, meta.get("weight_decay", 0.0), meta.get("l1", 0.0),
                  **meta.get("hyper", {}))
        opt.t = int(meta.get("t", 0))
        return opt


def new_optimizer(opts: TrainOptions, size: int) -> Optimizer:
    """The update rule the options name, with the hyperparameters given for it, fresh state."""
    hyper = {k: getattr(opts, k) for k in ("beta1", "beta2", "alpha", "momentum", "rho", "eps")}
    hyper = {k: v for k, v in hyper.items() if v is not None and k in OPTIMIZER_DEFAULTS[opts.optimizer]}
    return Optimizer(opts.optimizer, size, np.float32, opts.weight_decay, opts.l1, **hyper)


def new_optimizer_slots(opts: TrainOptions) -> int:
    """Arrays of optimizer state, each the size of the weights, that the options' rule keeps."""
    return len(STATE_NAMES[opts.optimizer])


@dataclass
class Schedule:
    """The learning rate of a run as plain data. `base` is the rate before annealing: epoch decay,
    plateaus and rollbacks multiply it down, and it travels in the checkpoint's progress as `lr`.
    `rate()` anneals it over the run's progress, the larger of steps / horizon and elapsed /
    budget, so the rate reaches its floor whether the epochs or the minutes end the run."""
    base: float
    # the defaults are the run's (options.py): cosine anneals to floor * base by the end; constant
    kind: str = TrainOptions.lr_schedule
    floor: float = TrainOptions.lr_floor
    decay: float = TrainOptions.lr_decay              # multiply base by this each epoch from decay_after on
    decay_after: int = TrainOptions.lr_decay_after
    plateau: float = TrainOptions.lr_plateau          # multiply base by this after a validation that did not improve
    horizon: float = math.inf      # steps in the run (inf: no epoch cap)
    budget: float = math.inf       # seconds in the run (inf: no time budget)

    @classmethod
    def of(cls, opts: TrainOptions) -> "Schedule":
        """The schedule the run's options describe, at its base rate `opts.lr`."""
        return cls(opts.lr, opts.lr_schedule, opts.lr_floor, opts.lr_decay, opts.lr_decay_after, opts.lr_plateau)

    def factor(self, progress: float) -> float:
        """The annealing factor on the base rate at `progress` in [0, 1] of the run."""
        if self.kind == "constant":
            return 1.0
        p = min(max(progress, 0.0), 1.0)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * p))

    def rate(self, step: int, elapsed: float) -> float:
        """The rate of the step after `step` steps and `elapsed` seconds; changes nothing."""
        return self.base * self.factor(max(step / self.horizon, elapsed / self.budget))

    def on_epoch(self, epoch: int) -> None:
        """Epoch `epoch` (counted from 0) begins."""
        if self.decay != 1.0 and epoch >= self.decay_after:
            self.base *= self.decay

    def on_validation(self, improved: bool) -> None:
        """A scheduled validation ended, better than every earlier one or not."""
        if not improved and self.plateau != 1.0:
            self.base *= self.plateau

