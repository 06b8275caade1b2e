"""The layer-normalised LSTM's time loops on the CPU (norm "layer"; reference.py's
ln_lstm_forward and ln_lstm_backward): per step one recurrent product, then each gate block's
normalisation, the gates, the cell and the cell's normalisation in one pass over the rows.

A module of its own, so that a plain LSTM's run never compiles these (cold start). The cell
math reuses cpu_kernels' vectorisable exp and expm1. The recurrent product is never transposed
here (cpu.py does not ask for it): the normalisation reads each row's gates whole, which the
transposed product would leave in columns.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from charrnn.backends import cpu_kernels as K
from charrnn.model import LN_EPS

_FM = K._FM


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _norm_row(a, bi, j0, n, out, eps):
    """Normalise a[bi, j0:j0+n] into out[bi, j0:j0+n]; returns 1 / sqrt(var + eps). Two passes
    (mean, then the squares about it): one pass's E[x^2] - E[x]^2 cancels where the mean is large."""
    f = a.dtype.type
    s = f(0.0)
    for j in range(j0, j0 + n):
        s += a[bi, j]
    mu = s / f(n)
    s2 = f(0.0)
    for j in range(j0, j0 + n):
        d = a[bi, j] - mu
        s2 += d * d
    r = f(1.0) / np.sqrt(s2 / f(n) + eps)
    for j in range(j0, j0 + n):
        out[bi, j] = (a[bi, j] - mu) * r
    return r


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _ln_cells(a, bias, gain, cgain, cbias, c_prev, kind, c_out, tc_out, h_out, xh, rs, xc, rc, v, w, q, ib, gm, rd):
    """The cell for B rows: a (B,4H) holds the summed products without bias and becomes the
    activations i, f, g, o; writes c, act(cgain * LN(c) + cbias), h, and for the backward the
    normalised gates xh (B,4H), their 1/sigma rs (B,4), the normalised cell xc (B,H) and its
    1/sigma rc (B,). v, w, q, ib: work buffers as cpu_kernels._lstm_cells'. With rd, gm (B,H)
    holds recurrent dropout's masks on g."""
    B, G = a.shape
    H = G // 4
    f = a.dtype.type
    one, two, eps = f(1.0), f(2.0), f(LN_EPS)
    flat = v.reshape(B * G)
    vs = flat[:3 * B * H].reshape(B, 3 * H)
    vt = flat[3 * B * H:].reshape(B, H)
    for bi in range(B):
        for k in range(4):
            rs[bi, k] = _norm_row(a, bi, k * H, H, xh, eps)
        for j in range(G):
            a[bi, j] = gain[j] * xh[bi, j] + bias[j]
        for j in range(2 * H):
            vs[bi, j] = -abs(a[bi, j])
        for j in range(H):
            vs[bi, 2 * H + j] = -abs(a[bi, 3 * H + j])
        if kind == K.TANH:
            for j in range(H):
                vt[bi, j] = -two * abs(a[bi, 2 * H + j])
    K.vexp(vs.reshape(3 * B * H), q, ib)
    if kind == K.TANH:
        K.vexpm1(vt.reshape(B * H), q, ib)
    for bi in range(B):
        if kind == K.TANH:
            for j in range(H):
                a[bi, 2 * H + j] = K._tanh_of(a[bi, 2 * H + j], vt[bi, j], one)
        else:
            for j in range(H):
                a[bi, 2 * H + j] = K._softsign(a[bi, 2 * H + j], one)
        for j in range(2 * H):
            a[bi, j] = K._sigmoid_of(a[bi, j], vs[bi, j], one)
        for j in range(H):
            a[bi, 3 * H + j] = K._sigmoid_of(a[bi, 3 * H + j], vs[bi, 2 * H + j], one)
        if rd:
            for j in range(H):
                c_out[bi, j] = a[bi, H + j] * c_prev[bi, j] + a[bi, j] * (a[bi, 2 * H + j] * gm[bi, j])
        else:
            for j in range(H):
                c_out[bi, j] = a[bi, H + j] * c_prev[bi, j] + a[bi, j] * a[bi, 2 * H + j]
        rc[bi] = _norm_row(c_out, bi, 0, H, xc, eps)
        for j in range(H):
            cn = cgain[j] * xc[bi, j] + cbias[j]
            tc_out[bi, j] = cn
            w[bi, j] = -two * abs(cn)
    if kind == K.TANH:
        K.vexpm1(w.reshape(B * H), q, ib)
        for bi in range(B):
            for j in range(H):
                t = K._tanh_of(tc_out[bi, j], w[bi, j], one)
                tc_out[bi, j] = t
                h_out[bi, j] = a[bi, 3 * H + j] * t
    else:
        for bi in range(B):
            for j in range(H):
                t = K._softsign(tc_out[bi, j], one)
                tc_out[bi, j] = t
                h_out[bi, j] = a[bi, 3 * H + j] * t


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def ln_lstm_forward(gates, bias, gain, cgain, cbias, Wh, hs, cs, tcs, xh, rs, xc, rc, kind, gm, rd, kc, kh, zo):
    """A window's time loop, as cpu_kernels.lstm_forward: gates (T,B,4H) holds the input
    projections without bias and becomes the activations; hs, cs (T+1,B,H) hold the carried
    state at [0]. Fills xh (T,B,4H), rs (T,B,4), xc (T,B,H) and rc (T,B) for the backward. With
    rd, gm (T,B,H) holds recurrent dropout's masks; with zo, kc and kh (T,B,H) zoneout's keep
    factors on c and h (masks in training, the rates in scoring); otherwise they are never read."""
    T, B, G = gates.shape
    v, w, q, ib = K._cell_buffers(B, G, gates.dtype)
    for t in range(T):
        a = gates[t]
        K._mm(hs[t], Wh, a, 1.0)      # a few rows (one-stream scoring) on this thread, more by BLAS
        _ln_cells(a, bias, gain, cgain, cbias, cs[t], kind, cs[t + 1], tcs[t], hs[t + 1], xh[t], rs[t], xc[t],
                  rc[t], v, w, q, ib, gm[t], rd)
        if zo:
            _zone(cs[t], cs[t + 1], kc[t])
            _zone(hs[t], hs[t + 1], kh[t])


@njit(inline="always", fastmath=_FM, error_model="numpy")
def _zone(prev, cur, k):
    """Zoneout's blend in place, cur = k * prev + (1 - k) * cur, for rows of H units."""
    one = cur.dtype.type(1.0)
    for bi in range(cur.shape[0]):
        for j in range(cur.shape[1]):
            kk = k[bi, j]
            cur[bi, j] = kk * prev[bi, j] + (one - kk) * cur[bi, j]


@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def ln_lstm_backward(dh_out, WhT, cs, gates, tcs, xh, rs, xc, rc, gain, cgain, kind, gm, rd, kc, kh, zo, da, dh,
                     dc, carry, g_b, g_gain, g_cgain, g_cbias):
    """The backward time loop, as cpu_kernels.lstm_backward: writes da (T,B,4H), the gradient on
    the summed products (the weights' and the input's); adds the bias's, the gains' and the
    cell bias's gradients to g_b, g_gain, g_cgain, g_cbias. dh, dc (B,H) and `carry` as there;
    gm, rd, kc, kh and zo the forward's. Zoneout splits each state's gradient: k of it goes
    straight to the previous state (into dh before the recurrent product adds to it), 1 - k
    through the cell."""
    T, B, H = dh_out.shape
    f = da.dtype.type
    one = f(1.0)
    inv_h = f(1.0) / f(H)
    dxc = np.empty(H, da.dtype)
    for t in range(T - 1, -1, -1):
        g4, d4, cp, tc, dho = gates[t], da[t], cs[t], tcs[t], dh_out[t]
        xht, rst, xct, gmt, kct, kht = xh[t], rs[t], xc[t], gm[t], kc[t], kh[t]
        for bi in range(B):
            m1, m2 = f(0.0), f(0.0)
            for j in range(H):                       # the output gate and the normalised cell
                y, o = tc[bi, j], g4[bi, 3 * H + j]
                d = dho[bi, j] + dh[bi, j]
                if zo:
                    dh[bi, j] = kht[bi, j] * d
                    d = (one - kht[bi, j]) * d
                d4[bi, 3 * H + j] = d * y * o * (one - o)
                dcn = d * o * K._dact(y, kind, one)
                g_cgain[j] += dcn * xct[bi, j]
                g_cbias[j] += dcn
                e = dcn * cgain[j]
                dxc[j] = e
                m1 += e
                m2 += e * xct[bi, j]
            m1 *= inv_h
            m2 *= inv_h
            r = rc[t, bi]
            for j in range(H):                       # through the cell's normalisation to c, then the gates
                dkeep = f(0.0)
                if zo:
                    dkeep = kct[bi, j] * dc[bi, j]
                    dc[bi, j] = (one - kct[bi, j]) * dc[bi, j]
                dcc = dc[bi, j] + r * (dxc[j] - m1 - xct[bi, j] * m2)
                i, fg, g = g4[bi, j], g4[bi, H + j], g4[bi, 2 * H + j]
                dcm = dcc * gmt[bi, j] if rd else dcc          # the gradient on i * g, through the mask
                d4[bi, j] = dcm * g * i * (one - i)
                d4[bi, H + j] = dcc * cp[bi, j] * fg * (one - fg)
                d4[bi, 2 * H + j] = dcm * i * K._dact(g, kind, one)
                dc[bi, j] = dcc * fg + dkeep
            for k in range(4):                       # d4 holds the gradient on gain * LN(a) + b: through LN
                s1, s2 = f(0.0), f(0.0)
                for j in range(k * H, k * H + H):
                    dz = d4[bi, j]
                    g_b[j] += dz
                    g_gain[j] += dz * xht[bi, j]
                    e = dz * gain[j]
                    d4[bi, j] = e
                    s1 += e
                    s2 += e * xht[bi, j]
                s1 *= inv_h
                s2 *= inv_h
                r = rst[bi, k]
                for j in range(k * H, k * H + H):
                    d4[bi, j] = r * (d4[bi, j] - s1 - xht[bi, j] * s2)
        if t > 0 or carry:
            K._mm(d4, WhT, dh, 1.0 if zo else 0.0)


# ---------------------------------------------------------------- sampling
@njit(cache=True, nogil=True, fastmath=_FM, error_model="numpy")
def ln_step(flat, offs, noffs, embed_off, embed, out_w, codes, state, new_state, logits, kind, zc, zh):
    """One sampling step of every layer and row, as cpu_kernels.lstm_step with `fixed`: offs[l] =
    (Wx, Wh, b) and noffs[l] = (ln_g, lnc_g, lnc_b) offsets into flat, embed_off < 0 for one-hot
    input; state, new_state (L,2,B,H); logits (B,V); zc, zh the zoneout rates (0: none), whose
    expectation blends each new state with the old. Every product in mm_exact (mm_exact_batch,
    the same bits, for several rows) and the cell row by row, so each row's result is
    bit-identical alone or in any batch (`charrnn serve` steps unrelated requests together)."""
    L, _, B, H = state.shape
    G = 4 * H
    V = logits.shape[1]
    dt = flat.dtype
    pre = np.empty((B, G), dt)
    tc = np.empty((B, H), dt)
    xh, rs, xc, rc = np.empty((1, G), dt), np.empty((1, 4), dt), np.empty((1, H), dt), np.empty(1, dt)
    v, w, q, ib = K._cell_buffers(1, G, dt)
    gm = np.empty((0, 0), dt)
    zoned = zc > 0 or zh > 0
    if zoned:                                 # zoneout's expectation: every unit's factor the rate
        kc, kh = np.full((B, H), zc, dt), np.full((B, H), zh, dt)
    else:
        kc = kh = gm
    for l in range(L):
        o_x, o_h, o_b = offs[l, 0], offs[l, 1], offs[l, 2]
        o_g, o_cg, o_cb = noffs[l, 0], noffs[l, 1], noffs[l, 2]
        if l == 0 and embed_off < 0:
            K.gather_codes(flat, o_x, G, codes, pre)
        elif l == 0:
            x = np.empty((B, embed), dt)
            K.gather_codes(flat, embed_off, embed, codes, x)
            _mm_rows(x, flat[o_x:o_x + embed * G].reshape(embed, G), pre, 0.0)
        else:
            _mm_rows(new_state[l - 1, 0], flat[o_x:o_x + H * G].reshape(H, G), pre, 0.0)
        _mm_rows(state[l, 0], flat[o_h:o_h + H * G].reshape(H, G), pre, 1.0)
        for bi in range(B):
            _ln_cells(pre[bi:bi + 1], flat[o_b:o_b + G], flat[o_g:o_g + G], flat[o_cg:o_cg + H],
                      flat[o_cb:o_cb + H], state[l, 1, bi:bi + 1], kind, new_state[l, 1, bi:bi + 1], tc[bi:bi + 1],
                      new_state[l, 0, bi:bi + 1], xh, rs, xc, rc, v, w, q, ib, gm, False)
        if zoned:
            _zone(state[l, 1], new_state[l, 1], kc)
            _zone(state[l, 0], new_state[l, 0], kh)
    _mm_rows(new_state[L - 1, 0], flat[out_w:out_w + H * V].reshape(H, V), logits, 0.0)
    ob = out_w + H * V
    for bi in range(B):
        for k in range(V):
            logits[bi, k] += flat[ob + k]


@njit(inline="always", error_model="numpy")
def _mm_rows(a, b, c, beta):
    """mm_exact for one row, mm_exact_batch (the same bits) for more."""
    if a.shape[0] == 1:
        K.mm_exact(a, b, c, beta)
    else:
        K.mm_exact_batch(a, b, c, beta)


@njit(cache=True, nogil=True, error_model="numpy")
def ln_generate(flat, offs, noffs, embed_off, embed, out_w, codes, state, logits, kind, zc, zh, u, temp, top_k,
                out_codes, out_logp):
    """len(u) sampling steps in one call, as cpu_kernels.lstm_generate: ln_step, then
    cpu_kernels.draw_rows with u[s] (one uniform per row). codes (B,) and state (L,2,B,H) hold
    the last code and the state on entry, the newest on return; writes out_codes, out_logp
    (steps, B). The same calls as stepping from Python, so the same text."""
    nxt = np.empty_like(state)
    s_flat, n_flat = state.reshape(-1), nxt.reshape(-1)
    for st in range(u.shape[0]):
        ln_step(flat, offs, noffs, embed_off, embed, out_w, codes, state, nxt, logits, kind, zc, zh)
        for i in range(s_flat.shape[0]):
            s_flat[i] = n_flat[i]
        K.draw_rows(logits, u[st], temp, top_k, out_codes[st], out_logp[st])
        for bi in range(codes.shape[0]):
            codes[bi] = out_codes[st, bi]
