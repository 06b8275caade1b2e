"""One recurrent layer of the CPU backend over steps t0..t1 of a window: per cell a forward and a
backward, as reference.py's lstm_forward/lstm_backward, gru_*, rnn_* but for a chunk of steps,
each one compiled time loop of cpu_kernels. The window driver (cpu_window.py) composes them.

A layer's buffers (`Layer`) span the whole window, so a chunk's forward starts from the state
the previous chunk left (hs[t0], cs[t0]) and its backward leaves in `carry` the gradient on the
state entering step t0, which the previous chunk's backward starts from. The window's own
entering state is detached (truncated BPTT): the backward of a chunk starting at step 0 leaves
nothing there. Pre-activations are formed without the bias, which the kernels add.
Backward accumulates (+=) into the bias gradients (and layer normalisation's gains), as the
reference does; the driver forms the weight gradients over the whole window.
"""
from __future__ import annotations

import numpy as np

from charrnn.backends import cpu_kernels as K
from charrnn.backends import cpu_norm as N


class Layer:
    """Layer l's weights (views into the parameter buffer) and its buffers over a window of T
    steps and B streams, H hidden units in G = gates * H columns:
        pre   (T,B,G)    input projections (no bias); the forward turns them into what the
                         backward reads: LSTM i, f, g, o; GRU r, z, n; RNN the pre-activations
        hs    (T+1,B,H)  h, the carried state at [0]
        cs    (T+1,B,H)  LSTM: c, the carried state at [0];  tcs (T,B,H): act(c)
        hn    (T,B,H)    GRU: hU_n + bh, which r multiplies
        dx    (T,B,G)    gradient on the input-side pre-activations (training)
        dh    (T,B,G)    gradient on the recurrent side: dx itself but for the GRU
        carry (S,B,H)    gradient on the state between chunks (S = 2 for the LSTM: h, c)
        WhT   (G,H)      Wh transposed, contiguous (the backward's and transposed products)
    and with layer normalisation (`norm`: the views of the gains and the cell bias):
        xh (T,B,G), rs (T,B,4)   the normalised gates and their 1/sigma
        xc (T,B,H), rc (T,B)     the normalised cell and its 1/sigma
        gm (T,B,H), rd           recurrent dropout's masks on g, and whether this window has
                                 them (the driver sets both; gm is empty while never used)
        kc, kh (T,B,H), zo       zoneout's keep factors on c and h, and whether the model zones
                                 out (masks in training, the rates in scoring: the driver's)
    dx and dh may be shared with other layers (one lane runs the layers' backward one after
    the other, each consumed before the next starts)."""

    def __init__(self, cell: str, Wh, b, bh, T: int, B: int, dtype, WhT, dx=None, dh=None, norm=None):
        H, G = Wh.shape
        self.cell, self.Wh, self.b, self.bh, self.WhT, self.norm = cell, Wh, b, bh, WhT, norm
        if norm is not None:
            self.xh, self.rs = np.empty((T, B, G), dtype), np.empty((T, B, 4), dtype)
            self.xc, self.rc = np.empty((T, B, H), dtype), np.empty((T, B), dtype)
            self.gm, self.rd = np.empty((T, 0, 0), dtype), False
            self.kc = self.kh = np.empty((T, 0, 0), dtype)
            self.zo = False
        self.pre = np.empty((T, B, G), dtype)
        self.hs = np.empty((T + 1, B, H), dtype)
        if cell == "lstm":
            self.cs = np.empty((T + 1, B, H), dtype)
            self.tcs = np.empty((T, B, H), dtype)
        if cell == "gru":
            self.hn = np.empty((T, B, H), dtype)
        self.dx, self.dh = dx, dh
        self.carry = np.zeros((2 if cell == "lstm" else 1, B, H), dtype)
        # a warm-up's tiny model (CpuBackend's _warm_up): while the LSTM cell still compiles aside,
        # its forward runs through a stand-in (cpu_kernels.call_with_cells) and does not wait
        self.stand_in = False


# ---------------------------------------------------------------- LSTM
def lstm_forward(ly: Layer, t0: int, t1: int, kind: int, transposed: bool) -> None:
    kernel, W = (K.lstm_forward_t, ly.WhT) if transposed else (K.lstm_forward, ly.Wh)
    args = (ly.pre[t0:t1], ly.b, W, ly.hs[t0:t1 + 1], ly.cs[t0:t1 + 1], ly.tcs[t0:t1], kind)
    K.call_with_cells(kernel, ly.pre.dtype, *args, stand_in=ly.stand_in)


def lstm_backward(ly: Layer, dh_out: np.ndarray, t0: int, t1: int, kind: int, transposed: bool,
                  grads: tuple) -> None:
    """dh_out (t1-t0,B,H): gradient on the chunk's outputs. Writes dx (= dh) over the chunk.
    grads: the layer's gradients added to, here (bias,)."""
    gb, = grads
    if transposed:
        K.lstm_backward_t(dh_out, ly.Wh, ly.cs[t0:t1], ly.pre[t0:t1], ly.tcs[t0:t1], kind, ly.dx[t0:t1],
                          ly.carry[0], ly.carry[1], t0 > 0)
    else:
        K.lstm_backward(dh_out, ly.WhT, ly.cs[t0:t1], ly.pre[t0:t1], ly.tcs[t0:t1], kind, ly.dx[t0:t1],
                        ly.carry[0], ly.carry[1], t0 > 0)
    K.colsum_add(gb, ly.dx[t0:t1].reshape(-1, ly.dx.shape[2]))    # while the chunk is in cache


# ---------------------------------------------------------------- layer-normalised LSTM
def ln_lstm_forward(ly: Layer, t0: int, t1: int, kind: int, transposed: bool) -> None:
    gain, cgain, cbias = ly.norm
    N.ln_lstm_forward(ly.pre[t0:t1], ly.b, gain, cgain, cbias, ly.Wh, ly.hs[t0:t1 + 1], ly.cs[t0:t1 + 1],
                      ly.tcs[t0:t1], ly.xh[t0:t1], ly.rs[t0:t1], ly.xc[t0:t1], ly.rc[t0:t1], kind,
                      ly.gm[t0:t1], ly.rd, ly.kc[t0:t1], ly.kh[t0:t1], ly.zo)


def ln_lstm_backward(ly: Layer, dh_out: np.ndarray, t0: int, t1: int, kind: int, transposed: bool,
                     grads: tuple) -> None:
    """grads: (bias, gate gains, cell gain, cell bias), each added to."""
    gain, cgain, _ = ly.norm
    N.ln_lstm_backward(dh_out, ly.WhT, ly.cs[t0:t1], ly.pre[t0:t1], ly.tcs[t0:t1], ly.xh[t0:t1], ly.rs[t0:t1],
                       ly.xc[t0:t1], ly.rc[t0:t1], gain, cgain, kind, ly.gm[t0:t1], ly.rd, ly.kc[t0:t1],
                       ly.kh[t0:t1], ly.zo, ly.dx[t0:t1], ly.carry[0], ly.carry[1], t0 > 0, *grads)


# ---------------------------------------------------------------- GRU
def gru_forward(ly: Layer, t0: int, t1: int, kind: int, transposed: bool) -> None:
    K.gru_forward(ly.pre[t0:t1], ly.b, ly.bh, ly.Wh, ly.hs[t0:t1 + 1], ly.hn[t0:t1], kind)


def gru_backward(ly: Layer, dh_out: np.ndarray, t0: int, t1: int, kind: int, transposed: bool,
                 grads: tuple) -> None:
    """grads: (bias, bh), each added to."""
    gb, gbh = grads
    K.gru_backward(dh_out, ly.pre[t0:t1], ly.hn[t0:t1], ly.hs[t0:t1 + 1], ly.WhT, kind, ly.dx[t0:t1],
                   ly.dh[t0:t1], ly.carry[0], t0 > 0)
    G = ly.dx.shape[2]
    K.colsum_add(gb, ly.dx[t0:t1].reshape(-1, G))
    K.colsum_add(gbh, ly.dh[t0:t1].reshape(-1, G)[:, 2 * G // 3:])


# ---------------------------------------------------------------- RNN
def rnn_forward(ly: Layer, t0: int, t1: int, kind: int, transposed: bool) -> None:
    K.rnn_forward(ly.pre[t0:t1], ly.b, ly.Wh, ly.hs[t0:t1 + 1], kind)


def rnn_backward(ly: Layer, dh_out: np.ndarray, t0: int, t1: int, kind: int, transposed: bool,
                 grads: tuple) -> None:
    gb, = grads
    K.rnn_backward(dh_out, ly.hs[t0:t1 + 1], ly.WhT, kind, ly.dx[t0:t1], ly.carry[0], t0 > 0)
    K.colsum_add(gb, ly.dx[t0:t1].reshape(-1, ly.dx.shape[2]))


# by (cell, norm)
FORWARD = {("lstm", "none"): lstm_forward, ("lstm", "layer"): ln_lstm_forward, ("gru", "none"): gru_forward,
           ("rnn", "none"): rnn_forward}
BACKWARD = {("lstm", "none"): lstm_backward, ("lstm", "layer"): ln_lstm_backward, ("gru", "none"): gru_backward,
            ("rnn", "none"): rnn_backward}


def grad_names(cell: str, norm: str, l: int) -> tuple[str, ...]:
    """The names of layer l's gradients its backward adds to, in the order it takes them."""
    if norm == "layer":
        return (f"l{l}.b", f"l{l}.ln_g", f"l{l}.lnc_g", f"l{l}.lnc_b")
    return (f"l{l}.b", f"l{l}.bh") if cell == "gru" else (f"l{l}.b",)
