"""The CPU backend's one window driver: forward, loss and backward of T steps of B streams,
any cell, as a graph of tasks over chunks of steps (DESIGN.md, "The CPU window").

Per chunk k of the steps and layer l (cpu_layers.py holds each cell's chunk forward/backward):
  X(l)    Wh^T, contiguous, for the backward and transposed products
  P(l,k)  input projection of layer l >= 1 (one GEMM over the chunk)    after F(l-1,k)
  F(l,k)  time loop (layer 0 first gathers its input rows, or projects its embedding), then
          the dropout of its output                                       after P(l,k), F(l,k-1)
                                                                          (and X(l) when transposed)
  O(k)    output layer, softmax and cross-entropy, and when training their backward:
          out's gradient and the gradient into layer L-1                  after F(L-1,k), O(k-1)
  R(l,k)  backward time loop, chunks from last to first, and the bias gradients
                                                                          after R(l,k+1) or X(l),
                                                                          and O(k) or D(l+1,k)
  D(l,k)  gradient into layer l-1 (l >= 1)                                after R(l,k)
  W(l)    Wh and Wx gradients of layer l over the whole window            after R(l,0)

On several lanes (lanes.py; a stacked model with at least as many layers as threads) the
window is cut in chunks and the lanes take ready tasks, deepest stage first, each calling BLAS
on one thread: layer l+1 works on chunk k while layer l works on chunk k+1, and the weight
gradients fill the gaps. On one lane the same graph has one chunk and runs in order on the
calling thread: every product is one GEMM over the whole window, BLAS threaded, and the time
loops call BLAS on the threads CpuBackend._step_threads allows. Either way the results are
bit-identical from run to run for a given lane count.
"""
from __future__ import annotations

from functools import partial

import numpy as np

from charrnn.backends import cpu_kernels as K
from charrnn.backends.cpu_layers import BACKWARD, FORWARD, Layer, grad_names
from charrnn.backends.lanes import lanes, run_graph
from charrnn.dropout import recurrent_seed, zoneout_seed
from charrnn.model import ModelConfig, Params


def chunk_bounds(T: int, n: int, end: float) -> list[tuple[int, int]]:
    """Split T steps into min(n, T) chunks, the first and last `end` times as long as the
    others: a window's graph starts on its first chunk and turns from forward to backward on
    its last, and one lane waits meanwhile."""
    n = min(n, T)
    w = [1.0] * n
    if n > 2:
        w[0] = w[-1] = end
    total, acc, cuts = sum(w), 0.0, [0]
    for i in range(n - 1):
        acc += w[i]
        cuts.append(min(max(int(acc / total * T + 0.5), cuts[-1] + 1), T - (n - 1 - i)))
    cuts.append(T)
    return list(zip(cuts, cuts[1:]))


class Dropout:
    """A training window's dropout: seed, rate p, scale 1/(1-p) in the float type, and where
    these B streams sit in the global batch (streams off.. of total). The masks are hashed where
    they are applied (charrnn/dropout.py); `kept` (L, T*B, H) records them for the backward.
    Recurrent dropout (rate rp, the layer-normalised LSTM's) hashes its own seed's masks into
    the layers' gm buffers before each chunk's forward, which its backward reads again; zoneout
    (rates zc, zh) its keep masks into kc and kh the same way."""

    def __init__(self, seed: int, p: float, dtype, L: int, T: int, B: int, H: int, off: int, total: int,
                 rp: float = 0.0, zc: float = 0.0, zh: float = 0.0):
        self.seed, self.p, self.scale = np.uint64(seed), float(p), dtype.type(1.0 / (1.0 - p))
        self.kept = np.empty((L, T * B, H), np.bool_) if p > 0 else None
        self.off, self.total, self.T, self.B = np.uint64(off), np.uint64(total), T, B
        self.rseed, self.rp, self.rscale = np.uint64(recurrent_seed(seed)), float(rp), dtype.type(1.0 / (1.0 - rp))
        self.zoneout = [(np.uint64(zoneout_seed(seed, i)), float(z)) for i, z in enumerate((zc, zh))]
        self.one = dtype.type(1.0)

    def zone(self, kc: np.ndarray, kh: np.ndarray, l: int, t0: int) -> None:
        """kc, kh (rows of H) = layer l's zoneout keep masks on c and h for the rows of steps t0..:
        1 with probability zc (zh), drawn as dropout's at p = 1 - rate with scale 1."""
        for out, (seed, z) in zip((kc, kh), self.zoneout):
            K.dropout_mask(out, seed, np.uint64(l * self.T + t0), self.B, self.total, self.off, 1.0 - z, self.one)

    def recurrent(self, gm: np.ndarray, l: int, t0: int) -> None:
        """gm (rows of H) = layer l's recurrent masks for the rows of steps t0.."""
        K.dropout_mask(gm, self.rseed, np.uint64(l * self.T + t0), self.B, self.total, self.off, self.rp,
                       self.rscale)

    def apply(self, src: np.ndarray, dst: np.ndarray, l: int, t0: int) -> None:
        """dst = src * layer l's masks for the rows of steps t0.. (src: whole steps' rows)."""
        r0 = t0 * self.B
        K.dropout_to(src, dst, self.kept[l, r0:r0 + src.shape[0]], self.seed, np.uint64(l * self.T + t0),
                     self.B, self.total, self.off, self.p, self.scale)

    def grad(self, d: np.ndarray, l: int, t0: int) -> None:
        """d *= the masks `apply` used for layer l's rows from step t0 on."""
        r0 = t0 * self.B
        K.dropout_kept(d, self.kept[l, r0:r0 + d.shape[0]], self.scale)


class Buffers:
    """A window shape's work buffers: the layers (cpu_layers.Layer), the logits, the embedded
    input, each layer's output after dropout and the gradient on it. `shared`: the layers share
    their gradient buffers (a window in one chunk on one lane, whose backward finishes each
    layer before it starts the one below)."""

    def __init__(self, cfg: ModelConfig, p: Params, T: int, B: int, dtype, shared: bool):
        self.cfg, self.T, self.B, self.dtype, self.shared = cfg, T, B, dtype, shared
        H, G, L = cfg.hidden, cfg.gates * cfg.hidden, cfg.layers
        norm = [(p[f"l{l}.ln_g"], p[f"l{l}.lnc_g"], p[f"l{l}.lnc_b"]) if cfg.norm == "layer" else None
                for l in range(L)]
        self.layers = [Layer(cfg.cell, p[f"l{l}.Wh"], p[f"l{l}.b"], p[f"l{l}.bh"] if cfg.cell == "gru" else None,
                             T, B, dtype, np.empty((G, H), dtype), norm=norm[l]) for l in range(L)]
        self.logits = np.empty((T * B, cfg.vocab_size), dtype)
        self.emb = np.empty((T * B, cfg.embed), dtype) if cfg.embed else None
        self.dropped: list | None = None
        self.dinp: list | None = None
        self.gm: list | None = None
        self.kc: list | None = None
        self.kh: list | None = None

    def for_training(self) -> None:
        """The gradient buffers, on a shape's first training window."""
        if self.dinp is not None:
            return
        cfg, T, B, dt = self.cfg, self.T, self.B, self.dtype
        G, L = cfg.gates * cfg.hidden, cfg.layers
        n = 1 if self.shared else L
        dx = [np.empty((T, B, G), dt) for _ in range(n)]
        dh = [np.empty((T, B, G), dt) for _ in range(n)] if cfg.cell == "gru" else dx
        for l, ly in enumerate(self.layers):
            ly.dx, ly.dh = dx[l % n], dh[l % n]
        dinp = [np.empty((T * B, cfg.hidden), dt) for _ in range(n)]
        self.dinp = [dinp[l % n] for l in range(L)]

    def for_recurrent(self, on: bool) -> None:
        """Point the layers at recurrent dropout's mask buffers (made on first use), or mark
        the window as without them."""
        if on and self.gm is None:
            self.gm = [np.empty((self.T, self.B, self.cfg.hidden), self.dtype) for _ in self.layers]
        for l, ly in enumerate(self.layers):
            ly.rd = on
            if on:
                ly.gm = self.gm[l]

    def for_zoneout(self, on: bool) -> None:
        """Point the layers at zoneout's keep factors (made on first use), or mark the model as
        without them."""
        if on and self.kc is None:
            shape = (self.T, self.B, self.cfg.hidden)
            self.kc = [np.empty(shape, self.dtype) for _ in self.layers]
            self.kh = [np.empty(shape, self.dtype) for _ in self.layers]
        for l, ly in enumerate(self.layers):
            ly.zo = on
            if on:
                ly.kc, ly.kh = self.kc[l], self.kh[l]

    def for_dropout(self) -> list:
        if self.dropped is None:
            self.dropped = [np.empty((self.T * self.B, self.cfg.hidden), self.dtype) for _ in range(self.cfg.layers)]
        return self.dropped


class WindowDriver:
    """Runs windows of one model (its parameters) and keeps the work buffers of the two most
    recent window shapes."""

    def __init__(self, cfg: ModelConfig, p: Params, kind: int):
        self.cfg, self.p, self.kind = cfg, p, kind
        self._bufs: dict = {}
        self.stand_in = False      # a warm-up's tiny model: its layers may run a stand-in cell (Layer.stand_in)

    def _buffers(self, T: int, B: int, shared: bool) -> Buffers:
        key = (T, B, shared)
        buf = self._bufs.pop(key, None)
        if buf is None:
            buf = Buffers(self.cfg, self.p, T, B, self.p.flat.dtype, shared)
            for ly in buf.layers:
                ly.stand_in = self.stand_in
            while len(self._bufs) >= 2:
                self._bufs.pop(next(iter(self._bufs)))
        self._bufs[key] = buf
        return buf

    def run(self, x: np.ndarray, y: np.ndarray, state: np.ndarray, drop: Dropout | None, g: Params | None,
            bounds: list[tuple[int, int]], n_lanes: int, transposed: bool, loop_threads: int,
            total: int | None = None) -> tuple[float, np.ndarray]:
        """One window: x, y (T,B) codes and targets, state (L,S,B,H).
        bounds: the chunks of steps (one on one lane); loop_threads: BLAS threads of the time
        loops on one lane. With a gradient buffer `g` (training) the gradients of the loss
        summed over the window over T * total go there (the trainer may swap the backend's
        buffer for one of its own, so it is passed each time). Returns (summed loss, new state)."""
        cfg, p, kind = self.cfg, self.p, self.kind
        train = g is not None
        T, B = x.shape
        H, G, L, dt = cfg.hidden, cfg.gates * cfg.hidden, cfg.layers, self.p.flat.dtype
        n = len(bounds)
        buf = self._buffers(T, B, n_lanes == 1 and n == 1)
        if train:
            buf.for_training()
        layers, logits, emb = buf.layers, buf.logits, buf.emb
        codes = np.ascontiguousarray(x.reshape(-1), dtype=np.int64)
        ys = np.ascontiguousarray(y.reshape(-1), dtype=np.int64)
        rows = [(t0 * B, t1 * B) for t0, t1 in bounds]
        if emb is not None:
            K.gather_rows(p["embed"], codes, emb)
        out_drop = drop is not None and drop.p > 0
        rec_drop = drop is not None and drop.rp > 0
        if cfg.norm == "layer":
            buf.for_recurrent(rec_drop)
            buf.for_zoneout(cfg.zoned)
        zone_masks = cfg.zoned and drop is not None    # training draws masks; scoring takes the rates
        outs = buf.for_dropout() if out_drop else [ly.hs[1:].reshape(T * B, H) for ly in layers]
        ins = [emb] + outs[:-1]                                # what each layer reads; None: one-hot codes
        for l, ly in enumerate(layers):
            ly.hs[0] = state[l, 0]
            if cfg.cell == "lstm":
                ly.cs[0] = state[l, 1]
        need_WhT = train or transposed
        losses = [0.0] * n
        scale = 1.0 / (T * (total or B))
        forward, backward = FORWARD[cfg.cell, cfg.norm], BACKWARD[cfg.cell, cfg.norm]
        if train:
            dinp = buf.dinp
            for name in ("out.W", "out.b", "embed", "l0.Wx", *(n for l in range(L) for n in grad_names(cfg.cell, cfg.norm, l))):
                if name in g:                                  # the gradients added to, not assigned
                    g[name][...] = 0
            for ly in layers:
                ly.carry[...] = 0

        def proj(l, k):
            (t0, t1), (r0, r1) = bounds[k], rows[k]
            K.matmul(ins[l][r0:r1], p[f"l{l}.Wx"], layers[l].pre[t0:t1].reshape(-1, G), False, False, 0.0)

        def fwd(l, k):
            (t0, t1), (r0, r1) = bounds[k], rows[k]
            ly = layers[l]
            if l == 0:
                pre = ly.pre[t0:t1].reshape(-1, G)
                if emb is None:
                    K.gather_rows(p["l0.Wx"], codes[r0:r1], pre)
                else:
                    K.matmul(emb[r0:r1], p["l0.Wx"], pre, False, False, 0.0)
            if rec_drop:
                drop.recurrent(ly.gm[t0:t1].reshape(-1, H), l, t0)
            if zone_masks:
                drop.zone(ly.kc[t0:t1].reshape(-1, H), ly.kh[t0:t1].reshape(-1, H), l, t0)
            elif cfg.zoned:
                ly.kc[t0:t1] = cfg.zoneout_cell
                ly.kh[t0:t1] = cfg.zoneout_hidden
            with K.blas_threads_at_most(loop_threads):
                forward(ly, t0, t1, kind, transposed)
            if out_drop:
                drop.apply(ly.hs[t0 + 1:t1 + 1].reshape(-1, H), outs[l][r0:r1], l, t0)

        def out(k):
            r0, r1 = rows[k]
            lg, top = logits[r0:r1], outs[L - 1][r0:r1]
            K.matmul(top, p["out.W"], lg, False, False, 0.0)
            K.add_bias(lg, p["out.b"])
            losses[k] = K.softmax_xent(lg, ys[r0:r1], scale, train)
            if train:                                          # lg now holds the logits' gradient
                K.matmul(top, lg, g["out.W"], True, False, 1.0)
                K.colsum_add(g["out.b"], lg)
                K.matmul(lg, p["out.W"], dinp[L - 1][r0:r1], False, True, 0.0)

        def bwd(l, k):
            (t0, t1), (r0, r1) = bounds[k], rows[k]
            ly, d = layers[l], dinp[l][r0:r1]
            if out_drop:
                drop.grad(d, l, t0)
            with K.blas_threads_at_most(loop_threads):
                backward(ly, d.reshape(-1, B, H), t0, t1, kind, transposed,
                         tuple(g[n] for n in grad_names(cfg.cell, cfg.norm, l)))
            if l == 0 and emb is not None:                     # the embedding's gradient, in chunk order
                de = np.empty((r1 - r0, cfg.embed), dt)
                K.matmul(ly.dx[t0:t1].reshape(-1, G), p["l0.Wx"], de, False, True, 0.0)
                K.scatter_add_rows(g["embed"], codes[r0:r1], de)

        def down(l, k):
            (t0, t1), (r0, r1) = bounds[k], rows[k]
            K.matmul(layers[l].dx[t0:t1].reshape(-1, G), p[f"l{l}.Wx"], dinp[l - 1][r0:r1], False, True, 0.0)

        def wgrad(l, name, j, blocks):
            """Column block j of `blocks` of layer l's Wh or Wx gradient."""
            c0, c1 = j * G // blocks, (j + 1) * G // blocks
            ly = layers[l]
            d = (ly.dh if name == "Wh" else ly.dx).reshape(T * B, G)[:, c0:c1]
            if name == "Wx" and ins[l] is None:
                K.scatter_add_rows(g["l0.Wx"][:, c0:c1], codes, d)
            else:
                src = ly.hs[:T].reshape(T * B, H) if name == "Wh" else ins[l]
                K.matmul(src, d, g[f"l{l}.{name}"][:, c0:c1], True, False, 0.0)

        tasks: list = []

        def add(fn, deps, prio):
            tasks.append((fn, [d for d in deps if d is not None], prio))
            return len(tasks) - 1

        X = [None] * L
        if need_WhT:
            for l in range(L):
                X[l] = add(partial(K.transpose, p[f"l{l}.Wh"], layers[l].WhT), [],
                           (0, -l, -1) if transposed else (1, l))
        F = [[None] * n for _ in range(L)]
        O = [None] * n
        for k in range(n):
            for l in range(L):
                pk = add(partial(proj, l, k), [F[l - 1][k]], (0, -l, k)) if l > 0 else None
                first = X[l] if k == 0 and transposed else None
                F[l][k] = add(partial(fwd, l, k), [pk, first, F[l][k - 1] if k else None], (0, -l, k))
            O[k] = add(partial(out, k), [F[L - 1][k], O[k - 1] if k else None], (0, -L, k))
        if train:
            R = [[None] * n for _ in range(L)]
            for k in range(n - 1, -1, -1):
                above = O[k]
                for l in range(L - 1, -1, -1):
                    R[l][k] = add(partial(bwd, l, k), [above, R[l][k + 1] if k < n - 1 else X[l]],
                                  (0, -(2 * L - l), n - k))
                    if l > 0:
                        above = add(partial(down, l, k), [R[l][k]], (0, -(2 * L - l), n - k))
                    if k == 0:     # layer 0's are the last work of the window: halves on lanes, so both share them
                        for name in ("Wh", "Wx"):
                            blocks = 2 if n_lanes > 1 and l == 0 and (name == "Wh" or emb is not None) else 1
                            for j in range(blocks):
                                add(partial(wgrad, l, name, j, blocks), [R[l][0]], (1, -l, j))
        if n_lanes > 1:
            with K.blas_threads_at_most(1):
                run_graph(lanes(n_lanes), tasks)
        else:                      # the list is in dependency order, each layer's backward after the one above
            for fn, _, _ in tasks:
                fn()
        new_state = np.empty_like(state)
        for l, ly in enumerate(layers):
            new_state[l, 0] = ly.hs[T]
            if cfg.cell == "lstm":
                new_state[l, 1] = ly.cs[T]
        return sum(losses), new_state
