"""The GPU backend's update: optim.py's rules as elementwise kernels over the flat buffer (one
kernel per rule, named as the rule in optim.RULES, arguments in that table's order), the L2/L1
penalties, the two-pass global-norm reduction in float64, and clipping by norm or by value.
"""
from __future__ import annotations

import math

from numba import cuda, float32, float64

from charrnn.backends.cuda_device import RED, block_sum

# ---------------------------------------------------------------- optimizers (optim.py's rules)
@cuda.jit(cache=True)
def penalties(w, g, l2, l1):
    k = cuda.grid(1)
    if k < w.shape[0]:
        sgn = 1.0 if w[k] > 0 else (-1.0 if w[k] < 0 else 0.0)
        g[k] += l2 * w[k] + l1 * sgn


@cuda.jit(cache=True)
def adam(w, g, m, v, lr, b1, b2, eps, c1, c2):
    k = cuda.grid(1)
    if k < w.shape[0]:
        m[k] = b1 * m[k] + (1.0 - b1) * g[k]
        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k]
        w[k] -= lr * (m[k] / c1) / (math.sqrt(v[k] / c2) + eps)


@cuda.jit(cache=True)
def adamw(w, g, m, v, lr, b1, b2, eps, c1, c2, wd):
    k = cuda.grid(1)
    if k < w.shape[0]:
        w[k] -= lr * wd * w[k]
        m[k] = b1 * m[k] + (1.0 - b1) * g[k]
        v[k] = b2 * v[k] + (1.0 - b2) * g[k] * g[k]
        w[k] -= lr * (m[k] / c1) / (math.sqrt(v[k] / c2) + eps)


@cuda.jit(cache=True)
def rmsprop(w, g, sq, lr, alpha, eps):
    k = cuda.grid(1)
    if k < w.shape[0]:
        sq[k] = alpha * sq[k] + (1.0 - alpha) * g[k] * g[k]
        w[k] -= lr * g[k] / (math.sqrt(sq[k]) + eps)


@cuda.jit(cache=True)
def adagrad(w, g, s, lr, eps):
    k = cuda.grid(1)
    if k < w.shape[0]:
        s[k] += g[k] * g[k]
        w[k] -= lr * g[k] / (math.sqrt(s[k]) + eps)


@cuda.jit(cache=True)
def adadelta(w, g, sq, delta, lr, rho, eps):
    k = cuda.grid(1)
    if k < w.shape[0]:
        sq[k] = rho * sq[k] + (1.0 - rho) * g[k] * g[k]
        d = math.sqrt(delta[k] + eps) / math.sqrt(sq[k] + eps) * g[k]
        delta[k] = rho * delta[k] + (1.0 - rho) * d * d
        w[k] -= lr * d


@cuda.jit(cache=True)
def sgd(w, g, vel, lr, mu):
    k = cuda.grid(1)
    if k < w.shape[0]:
        vel[k] = mu * vel[k] + g[k]
        w[k] -= lr * vel[k]


@cuda.jit(cache=True)
def nesterov(w, g, vel, lr, mu):
    k = cuda.grid(1)
    if k < w.shape[0]:
        vel[k] = mu * vel[k] + g[k]
        w[k] -= lr * (g[k] + mu * vel[k])


@cuda.jit(cache=True)
def sumsq_partial(g, part):
    """First pass of the global norm: part[block] = sum of g^2 over a grid-strided share, in float64."""
    red = cuda.shared.array(RED, float64)
    t = cuda.threadIdx.x
    acc = 0.0
    for k in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        acc += float64(g[k]) * float64(g[k])
    red[t] = acc
    total = block_sum(red, t)
    if t == 0:
        part[cuda.blockIdx.x] = total


@cuda.jit(cache=True)
def clip_by_norm(g, sumsq, value):
    """Rescale g to norm <= value when its (finite) norm exceeds it, as optim.clip_."""
    k = cuda.grid(1)
    norm = math.sqrt(sumsq[0])
    if k < g.shape[0] and norm > value and not math.isinf(norm) and not math.isnan(norm):
        g[k] *= float32(value / norm)


@cuda.jit(cache=True)
def clip_by_value(g, value):
    k = cuda.grid(1)
    if k < g.shape[0]:
        v = g[k]
        if v > value:
            v = value
        elif v < -value:
            v = -value
        g[k] = v
