"""Training diagnostics in the manner of Deeplearning4j's training UI, plus the gate statistics of
Karpathy, Johnson & Fei-Fei, "Visualizing and Understanding Recurrent Networks" (2015).

Per parameter tensor (the named views of the flat buffer):
  - the update:parameter ratio of the last step, log10(||dw|| / ||w||); around -3 is the usual
    sign of a healthy rate (much higher: the rate is too high; much lower: too low);
  - the L2 norm of the weights and of the raw gradient (before clipping);
  - a histogram of each weight matrix.
Per layer, from a forward pass of the oracle on a fixed probe of a few short streams:
  - mean |h|, mean |c| (LSTM), and the fraction of sigmoid-gate activations below 0.1 or above 0.9.

All plain functions of host arrays returning JSON-ready dicts; the trainer decides when.
"""
from __future__ import annotations

import math

import numpy as np

from charrnn.model import ModelConfig, Params, zero_state
from charrnn.optim import grad_norm

SATURATED = (0.1, 0.9)
PROBE_STREAMS, PROBE_STEPS = 4, 50
HIST_BINS = 30
# the sigmoid gates among each cell's gate blocks (model.py's order), by name
SIGMOID_GATES = {"lstm": {"i": 0, "f": 1, "o": 3}, "gru": {"r": 0, "z": 1}, "rnn": {}}


def _r(v: float, digits: int = 5) -> float | None:
    return round(float(v), digits) if math.isfinite(v) else None


def norms(p: Params) -> dict[str, float | None]:
    """The L2 norm of every named tensor (optim's float64 sum of squares: no BLAS call, which
    on a busy machine costs more than the sum itself)."""
    return {name: _r(grad_norm(v.reshape(-1)), 6) for name, v in p.views.items()}


def update_ratios(before: np.ndarray, after: Params) -> dict[str, float | None]:
    """log10(||w_after - w_before|| / ||w_after||) per tensor; None where either norm is 0."""
    delta = Params(after.cfg, after.flat - before)
    out: dict[str, float | None] = {}
    for name, w in after.views.items():
        nw, nd = grad_norm(w.reshape(-1)), grad_norm(delta[name].reshape(-1))
        out[name] = _r(math.log10(nd / nw), 4) if nw > 0 and nd > 0 and math.isfinite(nd / nw) else None
    return out


def histograms(p: Params, bins: int = HIST_BINS) -> dict[str, dict]:
    """Counts of each weight matrix's values in `bins` equal bins over its own range."""
    out = {}
    for name, v in p.views.items():
        if v.ndim != 2:
            continue
        vals = v.ravel()
        vals = vals[np.isfinite(vals)]
        if not vals.size:
            continue
        lo, hi = float(vals.min()), float(vals.max())
        counts, _ = np.histogram(vals, bins=bins, range=(lo, hi if hi > lo else lo + 1e-6))
        out[name] = {"lo": _r(lo, 6), "hi": _r(hi, 6), "counts": counts.tolist()}
    return out


def probe_codes(codes: np.ndarray, streams: int = PROBE_STREAMS, steps: int = PROBE_STEPS) -> np.ndarray | None:
    """A fixed (T, B) window from the start of `codes`: B consecutive pieces of T characters."""
    n = len(codes)
    if n < 2:
        return None
    T = min(steps, n)
    B = max(1, min(streams, n // T))
    return np.asarray(codes[:T * B], dtype=np.int64).reshape(B, T).T.copy()


def layer_stats(cfg: ModelConfig, p: Params, x: np.ndarray) -> list[dict]:
    """Per layer mean |h|, mean |c| (LSTM) and saturated-gate fractions (overall and per gate)
    over a forward pass (no dropout) of the probe x (T, B) from a zero state. The readable
    NumPy forward (reference.py) runs it, imported here: the fast kernels keep no gate
    activations for a probe, and training itself never loads the oracle."""
    from charrnn import reference as ref
    state = zero_state(cfg, x.shape[1], np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        _, cache, _ = ref.forward(p, cfg, x, None, state)
    lo, hi = SATURATED
    out = []
    H = cfg.hidden
    for inp, hs, cc in cache["layers"]:
        rec: dict = {"h": _r(float(np.mean(np.abs(hs[1:]))))}
        if cfg.cell == "lstm":
            rec["c"] = _r(float(np.mean(np.abs(cc[1][1:]))))
        gates = SIGMOID_GATES[cfg.cell]
        if gates:
            acts = cc[0]                                  # (T, B, G*H) after the nonlinearities
            per, total = {}, 0.0
            for name, k in gates.items():
                a = acts[:, :, k * H:(k + 1) * H]
                frac = float(np.mean((a < lo) | (a > hi)))
                per[name] = _r(frac, 4)
                total += frac
            rec["sat"] = _r(total / len(gates), 4)
            rec["sat_gates"] = per
        out.append(rec)
    return out
