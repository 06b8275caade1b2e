"""Each cell's chunk forward and backward (lnlstm: the layer-normalised LSTM) (charrnn/backends/cpu_layers.py, on cpu_kernels' window
kernels) held to reference.py's per-layer functions at real sizes: hidden 96, one stream over
300 steps and 50 streams, pre-activations spanning +-100, a carried state, the window cut in
chunks (the state and its gradient carried between them) or whole. Every output of the layer,
the gradients on both sides of the pre-activations, the bias gradients and the final state agree
with the float64 reference within 1e-9 relative in float64 and 1e-4 in float32 (the largest
difference over a tensor, relative to its largest value)."""
from __future__ import annotations

import numpy as np
import pytest

from charrnn import reference as ref
from charrnn.backends import cpu_kernels as K
from charrnn.backends.cpu_layers import BACKWARD, FORWARD, Layer

TOL = {np.float64: 1e-9, np.float32: 1e-4}
GATES = {"lstm": 4, "gru": 3, "rnn": 1, "lnlstm": 4}
KEY = {"lstm": ("lstm", "none"), "gru": ("gru", "none"), "rnn": ("rnn", "none"), "lnlstm": ("lstm", "layer")}
H = 96


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(float(np.max(np.abs(b))), 1e-30))


def _case(cell: str, T: int, B: int, seed: int):
    """Input projections heavy-tailed up to 100 in size (log-uniform over three decades, so some
    gates saturate and others do not), biases likewise up to 20, a contracting recurrence (gain
    0.8: not chaotic, so float32 can be held to float64 over hundreds of steps), a carried state
    with |c| up to 1e3, and a gradient arriving on every step's output."""
    r = np.random.default_rng(seed)
    G = GATES[cell] * H

    def heavy(shape, top):
        return r.choice([-1.0, 1.0], shape) * top * 10.0 ** r.uniform(-3, 0, shape)
    w = {"pre": heavy((T, B, G), 100.0), "b": heavy(G, 20.0), "bh": heavy(H, 20.0),
         "Wh": r.normal(0, 0.8 / np.sqrt(H), (H, G)), "h0": r.uniform(-1, 1, (B, H)),
         "c0": heavy((B, H), 1e3), "dh_out": r.normal(0, 1, (T, B, H)),
         "gain": r.uniform(0.5, 2.0, G), "cgain": r.uniform(0.5, 2.0, H), "cbias": r.normal(0, 1, H)}
    return w


def _reference(cell: str, w: dict, kind: str, dtype):
    """hs, the gradients on the input and recurrent sides, and the bias gradients, in dtype."""
    c = {k: v.astype(dtype) for k, v in w.items()}
    xw = c["pre"] + c["b"]
    zero = np.zeros_like(c["h0"])
    extra = {}
    with np.errstate(over="ignore"):
        if cell == "lnlstm":
            hs, cache = ref.ln_lstm_forward(c["pre"], c["b"], c["Wh"], c["h0"], c["c0"], kind, c["gain"],
                                            c["cgain"], c["cbias"])
            grads = (np.zeros(4 * H, dtype), np.zeros(H, dtype), np.zeros(H, dtype))
            dx, dz, _, _ = ref.ln_lstm_backward(c["dh_out"], c["Wh"], cache, zero, zero, kind, c["gain"],
                                                c["cgain"], grads)
            dh, c_T = dx, cache[1][-1]
            extra = {"gb": dz.reshape(-1, 4 * H).sum(0), "ggain": grads[0], "gcgain": grads[1], "gcbias": grads[2]}
        elif cell == "lstm":
            hs, cache = ref.lstm_forward(xw, c["Wh"], c["h0"], c["c0"], kind)
            dx, dh, _, _ = ref.lstm_backward(c["dh_out"], c["Wh"], hs, cache, zero, zero, kind)
            c_T = cache[1][-1]
        elif cell == "gru":
            hs, cache = ref.gru_forward(xw, c["Wh"], c["bh"], c["h0"], kind)
            dx, dh, _ = ref.gru_backward(c["dh_out"], c["Wh"], hs, cache, zero, kind)
            c_T = None
        else:
            hs, _ = ref.rnn_forward(xw, c["Wh"], c["h0"], kind)
            dx, dh, _ = ref.rnn_backward(c["dh_out"], c["Wh"], hs, zero, kind)
            c_T = None
    G = dx.shape[2]
    gb = dx.reshape(-1, G).sum(0)
    gbh = dh.reshape(-1, G)[:, 2 * H:].sum(0) if cell == "gru" else None
    return {"hs": hs, "c_T": c_T, "dx": dx, "dh": dh, "gb": gb, "gbh": gbh, **extra}


def _fast(cell: str, w: dict, kind: str, dtype, bounds):
    """The layer over the window, chunk by chunk: forward first to last, backward last to first."""
    T, B, G = w["pre"].shape
    k = K.TANH if kind == "tanh" else K.SOFTSIGN
    Wh = w["Wh"].astype(dtype)
    norm = tuple(w[n].astype(dtype) for n in ("gain", "cgain", "cbias")) if cell == "lnlstm" else None
    ly = Layer(KEY[cell][0], Wh, w["b"].astype(dtype), w["bh"].astype(dtype) if cell == "gru" else None, T, B,
               dtype, np.ascontiguousarray(Wh.T), np.empty((T, B, G), dtype), norm=norm)
    ly.dh = np.empty((T, B, G), dtype) if cell == "gru" else ly.dx
    ly.pre[...] = w["pre"]
    ly.hs[0] = w["h0"]
    if cell in ("lstm", "lnlstm"):
        ly.cs[0] = w["c0"]
    for t0, t1 in bounds:
        FORWARD[KEY[cell]](ly, t0, t1, k, False)
    gb, gbh = np.zeros(G, dtype), np.zeros(H, dtype)
    grads = {"lstm": (gb,), "rnn": (gb,), "gru": (gb, gbh),
             "lnlstm": (gb, np.zeros(G, dtype), np.zeros(H, dtype), np.zeros(H, dtype))}[cell]
    dh_out = w["dh_out"].astype(dtype)
    for t0, t1 in reversed(bounds):
        BACKWARD[KEY[cell]](ly, dh_out[t0:t1], t0, t1, k, False, grads)
    got = {"hs": ly.hs, "c_T": ly.cs[T] if cell in ("lstm", "lnlstm") else None, "dx": ly.dx, "dh": ly.dh,
           "gb": gb, "gbh": gbh if cell == "gru" else None}
    if cell == "lnlstm":
        got.update(ggain=grads[1], gcgain=grads[2], gcbias=grads[3])
    return got


def _max_diff(got: dict, want: dict) -> dict:
    return {k: _rel(got[k], v) for k, v in want.items() if v is not None}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("cell", ["gru", "rnn", "lstm", "lnlstm"])
# softsign runs with the slow tests: tests/test_cpu_regimes.py covers it in every CI run
@pytest.mark.parametrize("kind", ["tanh", pytest.param("softsign", marks=pytest.mark.slow)])
@pytest.mark.parametrize("T,B,bounds", [
    (300, 1, [(0, 300)]),                               # one stream, a long window, whole
    (300, 1, [(0, 7), (7, 8), (8, 150), (150, 300)]),   # the same in chunks, one of a single step
    (40, 50, [(0, 40)]),
    (40, 50, [(0, 13), (13, 40)]),
], ids=["B1-whole", "B1-chunks", "B50-whole", "B50-chunks"])
def test_chunk_forward_and_backward_match_the_reference_layer(dtype, cell, kind, T, B, bounds):
    w = _case(cell, T, B, seed=T + B)
    want = _reference(cell, w, kind, np.float64)
    if dtype == np.float32:      # not chaotic: the float32 reference itself stays within the tolerance
        assert max(_max_diff(_reference(cell, w, kind, np.float32), want).values()) < TOL[np.float32]
    diffs = _max_diff(_fast(cell, w, kind, dtype, bounds), want)
    assert max(diffs.values()) < TOL[dtype], diffs
    # the regime claimed: pre-activations of +-100 next to small ones; gates both saturated and not
    xw = np.abs(w["pre"] + w["b"])
    assert xw.max() > 100 and np.median(xw) < 10
