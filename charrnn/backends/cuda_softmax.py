"""The GPU backend's output side: softmax with cross-entropy fused in one kernel (a block per
row, the loss in float64 as on the CPU, the gradient written over the logits), and the
deterministic one-block sum of the losses.
"""
from __future__ import annotations

import math

from numba import cuda, float64

from charrnn.backends.cuda_device import RED, block_max, block_sum

# ---------------------------------------------------------------- output layer
@cuda.jit(device=True, inline=True)
def row_logsumexp(x, n, red, t):
    """log(sum(exp(x[n, :]))) in float64, the maximum taken out first, by the whole block (RED
    threads; red its shared float64 scratch). The loss and the sampler's log-probabilities use it."""
    V = x.shape[1]
    m = -math.inf
    for k in range(t, V, RED):
        v = float64(x[n, k])
        if v > m:
            m = v
    red[t] = m
    m = block_max(red, t)
    acc = 0.0
    for k in range(t, V, RED):
        acc += math.exp(float64(x[n, k]) - m)
    red[t] = acc
    return m + math.log(block_sum(red, t))


@cuda.jit(cache=True)
def softmax_xent(logits, y, scale, want_grad, losses):
    """One block per row: losses[n] = logsumexp(logits[n]) - logits[n, y[n]] (float64, as the CPU);
    with want_grad, logits[n] becomes scale * (softmax - onehot(y))."""
    red = cuda.shared.array(RED, float64)
    n = cuda.blockIdx.x
    t = cuda.threadIdx.x
    V = logits.shape[1]
    lse = row_logsumexp(logits, n, red, t)
    yn = y[n]
    if t == 0:
        losses[n] = lse - float64(logits[n, yn])
    cuda.syncthreads()                 # the loss has read its logit before the gradient overwrites it
    if want_grad:
        for k in range(t, V, RED):
            p = math.exp(float64(logits[n, k]) - lse) * scale
            if k == yn:
                p -= scale
            logits[n, k] = p


@cuda.jit(cache=True)
def sum_into(x, out):
    """out[0] = sum(x) in float64 by one block, in a fixed order (deterministic)."""
    red = cuda.shared.array(RED, float64)
    t = cuda.threadIdx.x
    acc = 0.0
    for k in range(t, x.shape[0], RED):
        acc += x[k]
    red[t] = acc
    total = block_sum(red, t)
    if t == 0:
        out[0] = total
