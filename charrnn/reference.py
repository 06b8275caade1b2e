"""The oracle: a pure-NumPy multi-layer LSTM / GRU / RNN language model, forward and backward.

Written to be read, not to be fast, and dtype-agnostic (tests run it in float64 against
central finite differences). Every fast backend is held to these functions.

Shapes: T steps, B sequences, H hidden, V vocabulary, L layers, G gate blocks.
    x, y     (T, B)        int codes and next-char targets
    state    (L, S, B, H)  carried state; S = 2 (h, c) for the LSTM, 1 (h) otherwise
    masks    (L, T, B, H)  dropout masks (0 or 1/(1-p)) on each layer's output, or None
    rmasks   (L, T, B, H)  recurrent dropout masks on the layer-normalised LSTM's candidate g
    zmasks   (L, 2, T, B, H) zoneout's keep masks on c and h (1 keeps the previous value)

Cells (gate order from model.py; act is tanh or softsign, s the sigmoid):
    LSTM  a = xW + hU + b;  i,f,o = s(a_i,a_f,a_o);  g = act(a_g);  c = f*c + i*g;  h = o*act(c)
    GRU   r,z = s(xW + hU + b);  n = act(xW_n + b_n + r*(hU_n + bh));  h = (1-z)*n + z*h
    RNN   h = act(xW + hU + b)                                              (Elman)
The GRU applies the reset gate after the recurrent product (cuDNN's and PyTorch's variant),
so hU for all gates is one product per step instead of two, and cuDNN checkpoints map 1:1.
The layer-normalised LSTM (norm "layer", Ba et al. 2016) normalises each gate block of the summed
products and the cell before its squashing, LN(v) = (v - mean v) / sqrt(var v + LN_EPS):
    a = xW + hU;  z_k = gain_k * LN(a_k) + b_k for k = i, f, g, o;  c = f*c + i*g;
    h = o * act(cgain * LN(c) + cbias)                     (c itself is carried unnormalised)
With recurrent dropout (Semeniuta et al. 2016) training takes c = f*c + i*(m*g), a fresh mask m
every step: the memory is never dropped, only what a step writes into it.
With zoneout (Krueger et al. 2016) each unit of c and h keeps its previous value where a mask is 1:
    c_t = k_c * c_{t-1} + (1 - k_c) * c_new,   h_t = k_h * h_{t-1} + (1 - k_h) * h_new
where c_new, h_new are the cell's as above (h_new from LN(c_new)). Training draws k in {0, 1}, 1
with probability zoneout_cell (zoneout_hidden); sampling and scoring take k = the rate itself,
the expectation.
One normalisation of the sum rather than one per product (Ba et al.'s form) keeps a single
recurrent product per step and a one-hot layer's input a gather.

Backward accumulates (+=) into the gradient views: zero them once, layers compose.
"""
from __future__ import annotations

import numpy as np

from charrnn.model import LN_EPS, ModelConfig


# ---------------------------------------------------------------- nonlinearities
def sigmoid(a):
    with np.errstate(over="ignore"):            # exp(-a) = inf for a < -709 gives exactly 0
        return 1.0 / (1.0 + np.exp(-a))


def act(a, kind: str):
    return np.tanh(a) if kind == "tanh" else a / (1.0 + np.abs(a))


def dact(y, kind: str):
    """Derivative of act expressed through its output y: tanh' = 1 - y^2, softsign' = (1 - |y|)^2."""
    return 1.0 - y * y if kind == "tanh" else (1.0 - np.abs(y)) ** 2


# ---------------------------------------------------------------- cells over a window
def lstm_forward(xw, Wh, h0, c0, kind):
    """xw (T,B,4H) input projections incl. bias -> hs (T+1,B,H) and the cache for backward."""
    T, B, G4 = xw.shape
    H = G4 // 4
    hs = np.empty((T + 1, B, H), xw.dtype); hs[0] = h0
    cs = np.empty((T + 1, B, H), xw.dtype); cs[0] = c0
    gates = np.empty_like(xw)     # post-nonlinearity i, f, g, o
    tcs = np.empty((T, B, H), xw.dtype)
    for t in range(T):
        a = xw[t] + hs[t] @ Wh
        i, f, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 3 * H:])
        g = act(a[:, 2 * H:3 * H], kind)
        cs[t + 1] = f * cs[t] + i * g
        tcs[t] = act(cs[t + 1], kind)
        hs[t + 1] = o * tcs[t]
        gates[t] = np.concatenate([i, f, g, o], axis=1)
    return hs, (gates, cs, tcs)


def lstm_backward(dh_out, Wh, hs, cache, dh_T, dc_T, kind):
    """dh_out (T,B,H): gradient on each step's output h. Returns dxw = dhw (T,B,4H), dh0, dc0."""
    gates, cs, tcs = cache
    T, B, H = dh_out.shape
    da = np.empty_like(gates)
    dh_next, dc_next = dh_T.copy(), dc_T.copy()
    for t in reversed(range(T)):
        i, f, g, o = (gates[t][:, k * H:(k + 1) * H] for k in range(4))
        dh = dh_out[t] + dh_next
        dc = dc_next + dh * o * dact(tcs[t], kind)
        da[t] = np.concatenate([dc * g * i * (1 - i),            # input gate
                                dc * cs[t] * f * (1 - f),        # forget gate
                                dc * i * dact(g, kind),          # candidate
                                dh * tcs[t] * o * (1 - o)], 1)   # output gate
        dc_next = dc * f
        dh_next = da[t] @ Wh.T
    return da, da, dh_next, dc_next


def norm(v):
    """v normalised over its last axis, and 1 / sqrt(var + LN_EPS) (keeping that axis, length 1)."""
    mu = v.mean(axis=-1, keepdims=True)
    r = 1.0 / np.sqrt(((v - mu) ** 2).mean(axis=-1, keepdims=True) + LN_EPS)
    return (v - mu) * r, r


def norm_backward(dn, n, r):
    """The gradient on v from the gradient dn on its normalisation n = norm(v)[0]."""
    return r * (dn - dn.mean(axis=-1, keepdims=True) - n * (dn * n).mean(axis=-1, keepdims=True))


def ln_lstm_forward(xw, b, Wh, h0, c0, kind, gain, cgain, cbias, gm=None, zm=None):
    """The layer-normalised LSTM: xw (T,B,4H) input projections WITHOUT the bias b, which enters
    after the normalisation; gm (T,B,H) recurrent dropout masks on g, or None; zm zoneout's keep
    factors (kc, kh), each (T,B,H) or a number, or None. Returns hs and the cache: lstm_forward's
    (gates, cs, tcs, where tcs is act of the normalised cell), the normalised values and their
    1/sigma, gm and zm, for backward."""
    T, B, G4 = xw.shape
    H = G4 // 4
    hs = np.empty((T + 1, B, H), xw.dtype); hs[0] = h0
    cs = np.empty((T + 1, B, H), xw.dtype); cs[0] = c0
    gates, xh = np.empty_like(xw), np.empty_like(xw)
    rs = np.empty((T, B, 4, 1), xw.dtype)
    tcs, xc = np.empty((T, B, H), xw.dtype), np.empty((T, B, H), xw.dtype)
    rc = np.empty((T, B, 1), xw.dtype)
    for t in range(T):
        a = xw[t] + hs[t] @ Wh
        n, rs[t] = norm(a.reshape(B, 4, H))
        xh[t] = n.reshape(B, G4)
        z = gain * xh[t] + b
        i, f, o = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H]), sigmoid(z[:, 3 * H:])
        g = act(z[:, 2 * H:3 * H], kind)
        c_new = f * cs[t] + i * (g if gm is None else g * gm[t])
        xc[t], rc[t] = norm(c_new)
        tcs[t] = act(cgain * xc[t] + cbias, kind)
        h_new = o * tcs[t]
        if zm is None:
            cs[t + 1], hs[t + 1] = c_new, h_new
        else:
            kc, kh = _at(zm[0], t), _at(zm[1], t)
            cs[t + 1] = kc * cs[t] + (1 - kc) * c_new
            hs[t + 1] = kh * hs[t] + (1 - kh) * h_new
        gates[t] = np.concatenate([i, f, g, o], axis=1)
    return hs, (gates, cs, tcs, xh, rs, xc, rc, gm, zm)


def _at(k, t):
    """Step t's zoneout factors: k[t] of a mask array, k itself of a number."""
    return k[t] if np.ndim(k) else k


def ln_lstm_backward(dh_out, Wh, cache, dh_T, dc_T, kind, gain, cgain, grads):
    """Returns da (T,B,4H), the gradient on xW + hU (both products' and the input's), dz
    (T,B,4H), the gradient on the bias, dh0, dc0; adds the gradients of gain, cgain and cbias to
    grads, a tuple of their three views."""
    gates, cs, tcs, xh, rs, xc, rc, gm, zm = cache
    g_gain, g_cgain, g_cbias = grads
    T, B, H = dh_out.shape
    da, dz = np.empty_like(gates), np.empty_like(gates)
    dh_next, dc_next = dh_T.copy(), dc_T.copy()
    for t in reversed(range(T)):
        i, f, g, o = (gates[t][:, k * H:(k + 1) * H] for k in range(4))
        dh = dh_out[t] + dh_next                                 # on h_t
        kc, kh = (0.0, 0.0) if zm is None else (_at(zm[0], t), _at(zm[1], t))
        dh_keep, dc_keep = kh * dh, kc * dc_next                 # zoneout's paths to the previous state
        dh, dc_next = (1 - kh) * dh, (1 - kc) * dc_next          # on h_new and c_new
        dcn = dh * o * dact(tcs[t], kind)                        # on cgain * LN(c) + cbias
        g_cgain += (dcn * xc[t]).sum(axis=0)
        g_cbias += dcn.sum(axis=0)
        dc = dc_next + norm_backward(dcn * cgain, xc[t], rc[t])
        m = 1.0 if gm is None else gm[t]
        dz[t] = np.concatenate([dc * m * g * i * (1 - i), dc * cs[t] * f * (1 - f),
                                dc * m * i * dact(g, kind), dh * tcs[t] * o * (1 - o)], 1)
        g_gain += (dz[t] * xh[t]).sum(axis=0)
        da[t] = norm_backward((dz[t] * gain).reshape(B, 4, H), xh[t].reshape(B, 4, H), rs[t]).reshape(B, 4 * H)
        dc_next = dc * f + dc_keep
        dh_next = da[t] @ Wh.T + dh_keep
    return da, dz, dh_next, dc_next


def gru_forward(xw, Wh, bh, h0, kind):
    T, B, G3 = xw.shape
    H = G3 // 3
    hs = np.empty((T + 1, B, H), xw.dtype); hs[0] = h0
    gates = np.empty_like(xw)     # r, z, n after their nonlinearities
    hn = np.empty((T, B, H), xw.dtype)   # hU_n + bh, which r multiplies
    for t in range(T):
        hw = hs[t] @ Wh
        r = sigmoid(xw[t][:, :H] + hw[:, :H])
        z = sigmoid(xw[t][:, H:2 * H] + hw[:, H:2 * H])
        hn[t] = hw[:, 2 * H:] + bh
        n = act(xw[t][:, 2 * H:] + r * hn[t], kind)
        hs[t + 1] = (1 - z) * n + z * hs[t]
        gates[t] = np.concatenate([r, z, n], axis=1)
    return hs, (gates, hn)


def gru_backward(dh_out, Wh, hs, cache, dh_T, kind):
    """Returns dxw (T,B,3H), dhw (T,B,3H) (gradient on hU, incl. bh for the n block), dh0."""
    gates, hn = cache
    T, B, H = dh_out.shape
    dxw = np.empty_like(gates)
    dhw = np.empty_like(gates)
    dh_next = dh_T.copy()
    for t in reversed(range(T)):
        r, z, n = (gates[t][:, k * H:(k + 1) * H] for k in range(3))
        dh = dh_out[t] + dh_next
        dan = dh * (1 - z) * dact(n, kind)
        dar = dan * hn[t] * r * (1 - r)
        daz = dh * (hs[t] - n) * z * (1 - z)
        dxw[t] = np.concatenate([dar, daz, dan], 1)
        dhw[t] = np.concatenate([dar, daz, dan * r], 1)
        dh_next = dh * z + dhw[t] @ Wh.T
    return dxw, dhw, dh_next


def rnn_forward(xw, Wh, h0, kind):
    T, B, H = xw.shape
    hs = np.empty((T + 1, B, H), xw.dtype); hs[0] = h0
    for t in range(T):
        hs[t + 1] = act(xw[t] + hs[t] @ Wh, kind)
    return hs, None


def rnn_backward(dh_out, Wh, hs, dh_T, kind):
    T, B, H = dh_out.shape
    da = np.empty_like(dh_out)
    dh_next = dh_T.copy()
    for t in reversed(range(T)):
        da[t] = (dh_out[t] + dh_next) * dact(hs[t + 1], kind)
        dh_next = da[t] @ Wh.T
    return da, da, dh_next


# ---------------------------------------------------------------- the whole model
def forward(p, cfg: ModelConfig, x, y, state, masks=None, rmasks=None, zmasks=None):
    """Loss (summed over T*B, natural log) and everything backward needs. A zoning-out model
    without zmasks takes the expectation (sampling's and scoring's).

    With y None, returns (logits, cache, new_state) instead: the sampler's and viewer's path.
    """
    T, B = x.shape
    inp = p["embed"][x] if cfg.embed else None
    layers, new_state = [], np.empty_like(state)
    for l in range(cfg.layers):
        Wx, Wh, b = p[f"l{l}.Wx"], p[f"l{l}.Wh"], p[f"l{l}.b"]
        xw = Wx[x] if inp is None else inp @ Wx               # one-hot input = row gather
        if cfg.norm == "layer":
            hs, cc = ln_lstm_forward(xw, b, Wh, state[l, 0], state[l, 1], cfg.activation,
                                     p[f"l{l}.ln_g"], p[f"l{l}.lnc_g"], p[f"l{l}.lnc_b"],
                                     None if rmasks is None else rmasks[l], _zoneout(cfg, zmasks, l))
            new_state[l, 1] = cc[1][-1]
        elif cfg.cell == "lstm":
            xw = xw + b
            hs, cc = lstm_forward(xw, Wh, state[l, 0], state[l, 1], cfg.activation)
            new_state[l, 1] = cc[1][-1]
        elif cfg.cell == "gru":
            hs, cc = gru_forward(xw + b, Wh, p[f"l{l}.bh"], state[l, 0], cfg.activation)
        else:
            hs, cc = rnn_forward(xw + b, Wh, state[l, 0], cfg.activation)
        new_state[l, 0] = hs[-1]
        layers.append((inp, hs, cc))
        inp = hs[1:] if masks is None else hs[1:] * masks[l]
    logits = inp @ p["out.W"] + p["out.b"]                       # (T, B, V)
    cache = {"x": x, "y": y, "layers": layers, "top": inp, "masks": masks}
    if y is None:
        return logits, cache, new_state
    z = logits - logits.max(axis=2, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    cache["probs"] = np.exp(logp)
    loss = -np.take_along_axis(logp, y[..., None], axis=2).sum()
    return loss, cache, new_state


def _zoneout(cfg: ModelConfig, zmasks, l: int):
    """Layer l's zoneout factors for ln_lstm_forward: its masks, the rates (the expectation), or
    None for a model that does not zone out."""
    if zmasks is not None:
        return zmasks[l, 0], zmasks[l, 1]
    return (cfg.zoneout_cell, cfg.zoneout_hidden) if cfg.zoned else None


def backward(p, g, cfg: ModelConfig, cache, scale: float = 1.0):
    """Accumulate d(scale * loss)/dparams into the views of `g`. Returns d loss / d state0."""
    x, y, masks = cache["x"], cache["y"], cache["masks"]
    T, B = x.shape
    H, V = cfg.hidden, cfg.vocab_size
    dlogits = cache["probs"].copy()
    np.put_along_axis(dlogits, y[..., None], np.take_along_axis(dlogits, y[..., None], 2) - 1.0, 2)
    dlogits *= scale
    top = cache["top"]
    g["out.W"] += top.reshape(-1, H).T @ dlogits.reshape(-1, V)
    g["out.b"] += dlogits.sum(axis=(0, 1))
    dinp = dlogits @ p["out.W"].T                                # gradient on the top layer's output
    dstate = np.zeros((cfg.layers, cfg.n_states, B, H), dtype=top.dtype)
    for l in reversed(range(cfg.layers)):
        inp, hs, cc = cache["layers"][l]
        Wx, Wh = p[f"l{l}.Wx"], p[f"l{l}.Wh"]
        dh_out = dinp if masks is None else dinp * masks[l]
        zeros = np.zeros((B, H), dtype=top.dtype)
        db = None                                                # the bias's gradient, where not dxw's
        if cfg.norm == "layer":
            dxw, db, dstate[l, 0], dstate[l, 1] = ln_lstm_backward(
                dh_out, Wh, cc, zeros, zeros, cfg.activation, p[f"l{l}.ln_g"], p[f"l{l}.lnc_g"],
                (g[f"l{l}.ln_g"], g[f"l{l}.lnc_g"], g[f"l{l}.lnc_b"]))
            dhw = dxw
        elif cfg.cell == "lstm":
            dxw, dhw, dstate[l, 0], dstate[l, 1] = lstm_backward(dh_out, Wh, hs, cc, zeros, zeros, cfg.activation)
        elif cfg.cell == "gru":
            dxw, dhw, dstate[l, 0] = gru_backward(dh_out, Wh, hs, cc, zeros, cfg.activation)
            g[f"l{l}.bh"] += dhw[:, :, 2 * H:].sum(axis=(0, 1))
        else:
            dxw, dhw, dstate[l, 0] = rnn_backward(dh_out, Wh, hs, zeros, cfg.activation)
        G = dxw.shape[2]
        g[f"l{l}.Wh"] += hs[:-1].reshape(-1, H).T @ dhw.reshape(-1, G)
        g[f"l{l}.b"] += (dxw if db is None else db).sum(axis=(0, 1))
        if inp is None:                                          # one-hot layer 0: scatter-add rows
            np.add.at(g[f"l{l}.Wx"], x.ravel(), dxw.reshape(-1, G))
        else:
            g[f"l{l}.Wx"] += inp.reshape(-1, inp.shape[2]).T @ dxw.reshape(-1, G)
            dinp = dxw @ Wx.T
    if cfg.embed:
        np.add.at(g["embed"], x.ravel(), dinp.reshape(-1, cfg.embed))
    return dstate
