"""Each cell's step on the GPU, written once: the forward from the gates' pre-activations and
the backward to them, as inline numba.cuda device functions for one (row, unit) pair.

The per-step gate kernels (cuda_gates.py), the persistent recurrence (cuda_recurrence.py) and
the sampling kernels (cuda_sampling.py) differ only in where the pre-activations come from and
where the results go; they all call these. Gate order and equations are reference.py's
(`lstm_forward`/`lstm_backward`, `gru_*`, `rnn_*`), the CPU twins cpu_kernels.py's.

The forwards compile without fastmath (their nonlinearities must be libdevice's, see
cuda_device.py); the backwards, products of values already computed, with it, as the kernels
that call them.
"""
from __future__ import annotations

from numba import cuda

from charrnn.backends.cuda_device import F1, act, dact, sig


# ---------------------------------------------------------------- LSTM (gates i, f, g, o)
@cuda.jit(device=True, inline=True)
def lstm_cell(ai, af, ag, ao, c_prev, kind):
    """Pre-activations of the four gates and c_{t-1} -> (i, f, g, o, c_t, act(c_t));
    h_t = o * act(c_t)."""
    i = sig(ai)
    f = sig(af)
    g = act(ag, kind)
    o = sig(ao)
    c = f * c_prev + i * g
    return i, f, g, o, c, act(c, kind)


@cuda.jit(device=True, inline=True, fastmath=True)
def lstm_cell_grad(dh, dc_next, i, f, g, o, c_prev, tc, kind):
    """dh (the whole gradient on h_t) and dc_next (on c_t from step t+1), with the forward's
    gates, c_{t-1} and tc = act(c_t) -> (da_i, da_f, da_g, da_o, the gradient on c_{t-1})."""
    dc = dc_next + dh * o * dact(tc, kind)
    return (dc * g * i * (F1 - i), dc * c_prev * f * (F1 - f), dc * i * dact(g, kind),
            dh * tc * o * (F1 - o), dc * f)


# ---------------------------------------------------------------- GRU (gates r, z, n)
@cuda.jit(device=True, inline=True)
def gru_cell(ar, az, xn, q, h_prev, kind):
    """Pre-activations of r and z, the candidate's input side xn and its recurrent side
    q = (h_{t-1} Wh)_n + bh, and h_{t-1} -> (r, z, n, h_t)."""
    r = sig(ar)
    z = sig(az)
    n = act(xn + r * q, kind)
    return r, z, n, (F1 - z) * n + z * h_prev


@cuda.jit(device=True, inline=True, fastmath=True)
def gru_cell_grad(dh, r, z, n, q, h_prev, kind):
    """dh (the whole gradient on h_t), the forward's r, z, n, q and h_{t-1} -> (da_r, da_z,
    da_n, the direct gradient on h_{t-1}). The gradient on q (the recurrent side of n) is
    da_n * r; on the recurrent products of r and z, da_r and da_z."""
    dan = dh * (F1 - z) * dact(n, kind)
    return dan * q * r * (F1 - r), dh * (h_prev - n) * z * (F1 - z), dan, dh * z


# ---------------------------------------------------------------- RNN (one block)
@cuda.jit(device=True, inline=True)
def rnn_cell(a, kind):
    """The pre-activation -> h_t."""
    return act(a, kind)


@cuda.jit(device=True, inline=True, fastmath=True)
def rnn_cell_grad(dh, h, kind):
    """dh (the whole gradient on h_t) and h_t -> the gradient on the pre-activation."""
    return dh * dact(h, kind)
