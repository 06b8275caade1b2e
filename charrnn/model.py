"""The model's shape: `ModelConfig` (plain data, written in config.py and re-exported here) and
`Params`, one flat float buffer with named views.

Layout (llm.c style): a sizes table gives every tensor a name, shape and offset in one
contiguous buffer; gradients and optimizer moments reuse the same layout, so an optimizer,
a clipping norm or a checkpoint is one operation on one array.

Per layer l (input width D_l: the vocabulary for a one-hot layer 0, `embed` when an
embedding is learned, `hidden` above), with G gate blocks of width H:
    l{l}.Wx  (D_l, G*H)   input weights; for one-hot input a row gather, never a GEMM
    l{l}.Wh  (H,   G*H)   recurrent weights
    l{l}.b   (G*H,)       bias (input side)
    l{l}.bh  (H,)         GRU only: bias of the candidate's recurrent product, inside r*(.)
    l{l}.ln_g  (G*H,)     layer-normalised LSTM only (norm "layer"): the gain of each normalised
    l{l}.lnc_g (H,)       gate block, and the gain and bias of the normalised cell
    l{l}.lnc_b (H,)       (l{l}.b is the gates' bias after their normalisation)
and once:
    embed    (V, D)       when embed > 0
    out.W    (H, V), out.b (V,)

Gate order, written once here: LSTM i, f, g, o; GRU r, z, n (as PyTorch and cuDNN); RNN one block.
"""
from __future__ import annotations

import numpy as np

from charrnn.config import ModelConfig  # noqa: F401 (re-exported: `from charrnn.model import ModelConfig`)

LN_EPS = 1e-5     # layer normalisation's floor under the variance (reference.py's and the kernels')


def param_shapes(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """The sizes table: every tensor's name and shape, in buffer order."""
    H, G, V = cfg.hidden, cfg.gates, cfg.vocab_size
    if V < 1:
        raise ValueError("the model's vocabulary is not set (vocab_size 0): build it for a text")
    shapes: list[tuple[str, tuple[int, ...]]] = []
    if cfg.embed:
        shapes.append(("embed", (V, cfg.embed)))
    for l in range(cfg.layers):
        d_in = (cfg.embed or V) if l == 0 else H
        shapes += [(f"l{l}.Wx", (d_in, G * H)), (f"l{l}.Wh", (H, G * H)), (f"l{l}.b", (G * H,))]
        if cfg.cell == "gru":
            shapes.append((f"l{l}.bh", (H,)))
        if cfg.norm == "layer":
            shapes += [(f"l{l}.ln_g", (G * H,)), (f"l{l}.lnc_g", (H,)), (f"l{l}.lnc_b", (H,))]
    shapes += [("out.W", (H, V)), ("out.b", (V,))]
    return shapes


def n_params(cfg: ModelConfig) -> int:
    return sum(int(np.prod(s)) for _, s in param_shapes(cfg))


def param_offsets(cfg: ModelConfig) -> dict[str, int]:
    """The offset table: where each tensor of the sizes table starts in the flat buffer."""
    offsets, off = {}, 0
    for name, shape in param_shapes(cfg):
        offsets[name] = off
        off += int(np.prod(shape))
    return offsets


def param_views(cfg: ModelConfig, flat) -> dict:
    """Each tensor as a view into `flat` (any 1-d array that slices and reshapes: host or device)."""
    offs = param_offsets(cfg)
    return {name: flat[offs[name]:offs[name] + int(np.prod(shape))].reshape(shape) for name, shape in param_shapes(cfg)}


class Params:
    """One contiguous buffer and a dict of named views into it (views share memory)."""

    def __init__(self, cfg: ModelConfig, flat: np.ndarray | None = None, dtype=np.float32):
        self.cfg = cfg
        n = n_params(cfg)
        if flat is None:
            flat = np.zeros(n, dtype=dtype)
        if flat.ndim != 1 or flat.size != n:
            raise ValueError(f"parameter buffer has {flat.size} values, the config needs {n}")
        self.flat = flat
        self.views: dict[str, np.ndarray] = param_views(cfg, flat)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def __setitem__(self, name: str, value) -> None:
        view = self.views[name]
        if value is not view:        # `p[name] += x` already wrote in place
            view[...] = value

    def __iter__(self):
        return iter(self.views)

    def like(self, dtype=None) -> "Params":
        """A zeroed buffer with the same layout (gradients, optimizer moments)."""
        return Params(self.cfg, np.zeros_like(self.flat, dtype=dtype or self.flat.dtype))

    def astype(self, dtype) -> "Params":
        return Params(self.cfg, self.flat.astype(dtype))


def init_params(cfg: ModelConfig, rng: np.random.Generator, dtype=np.float32) -> Params:
    """char-rnn's U(-0.08, 0.08), or Glorot uniform per gate block; biases zero,
    the LSTM forget-gate bias set to `forget_bias`, layer normalisation's gains one."""
    p = Params(cfg, dtype=dtype)
    for name, shape in param_shapes(cfg):
        v = p[name]
        if len(shape) == 1:
            v[...] = 0.0
            continue
        if cfg.init == "uniform":
            v[...] = rng.uniform(-0.08, 0.08, size=shape)
        else:
            fan_in, fan_out = shape[0], shape[1]
            if name.startswith("l"):   # each gate block is its own matrix
                fan_out = cfg.hidden
            a = np.sqrt(6.0 / (fan_in + fan_out))
            v[...] = rng.uniform(-a, a, size=shape)
    if cfg.cell == "lstm":
        H = cfg.hidden
        for l in range(cfg.layers):
            p[f"l{l}.b"][H:2 * H] = cfg.forget_bias
            if cfg.norm == "layer":
                p[f"l{l}.ln_g"][...] = 1.0
                p[f"l{l}.lnc_g"][...] = 1.0
    return p


def zero_state(cfg: ModelConfig, batch: int, dtype=np.float32) -> np.ndarray:
    """Carried state, shape (L, S, B, H): S = 2 (h, c) for the LSTM, 1 (h) otherwise."""
    return np.zeros((cfg.layers, cfg.n_states, batch, cfg.hidden), dtype=dtype)
