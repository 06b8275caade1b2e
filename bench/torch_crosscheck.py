"""The outside oracle: score a charrnn checkpoint with PyTorch's own recurrent layers.

Loads any charrnn LSTM, GRU or RNN checkpoint (one-hot or embedding input, tanh activation)
into torch.nn.LSTM / GRU / RNN + Linear with the same weights, scores a text with the state
carried through it (one stream, as `charrnn eval` does), and prints both figures:

    python bench/torch_crosscheck.py checkpoints/shakespeare/best.safetensors --split val
    python bench/torch_crosscheck.py RUN_DIR held_out.txt --json

The mapping is direct: PyTorch's LSTM gate order (i, f, g, o) and GRU gate order (r, z, n) are
charrnn's (reference.py); weight_ih = Wx^T, weight_hh = Wh^T, bias_ih = b, bias_hh = 0, except
the GRU's bias_hh = [0, 0, bh] (charrnn's bh sits inside r * (h Wh_n + bh), as PyTorch's b_hn).
A layer-normalised LSTM (norm "layer") has no torch.nn layer: `LayerNormLSTM` runs its step
(reference.py's ln_lstm_forward) in PyTorch's own operations, torch.nn.functional.layer_norm among
them, with the same weights.
PyTorch runs in float64 by default (--dtype float32 for its float32 kernels). Needs torch
(`pip install torch==2.13.0`, the CPU build).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from charrnn import checkpoint as ckpt  # noqa: E402
from charrnn.corpus import read_input, split  # noqa: E402


def torch_model(ck: ckpt.Checkpoint, dtype):
    """(embedding or None, recurrent module, output Linear) holding the checkpoint's weights."""
    import torch
    cfg, p = ck.config, ck.params
    if cfg.activation != "tanh":
        raise SystemExit(f"PyTorch has no {cfg.activation} recurrent layers; only tanh models can be checked")
    L, H, V = cfg.layers, cfg.hidden, cfg.vocab_size
    D = cfg.embed or V
    t = lambda a: torch.tensor(np.asarray(a, np.float64), dtype=dtype)   # noqa: E731
    if cfg.norm == "layer":
        rnn = LayerNormLSTM([tuple(t(p[f"l{l}.{n}"]) for n in ("Wx", "Wh", "b", "ln_g", "lnc_g", "lnc_b"))
                             for l in range(L)], cfg.zoneout_cell, cfg.zoneout_hidden)
    else:
        kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cfg.cell]
        rnn = kind(D, H, num_layers=L).to(dtype)
    with torch.no_grad():
        if cfg.norm == "none":                       # LayerNormLSTM holds its weights already
            for l in range(L):
                getattr(rnn, f"weight_ih_l{l}").copy_(t(p[f"l{l}.Wx"]).T)
                getattr(rnn, f"weight_hh_l{l}").copy_(t(p[f"l{l}.Wh"]).T)
                getattr(rnn, f"bias_ih_l{l}").copy_(t(p[f"l{l}.b"]))
                bhh = torch.zeros(cfg.gates * H, dtype=dtype)
                if cfg.cell == "gru":
                    bhh[2 * H:] = t(p[f"l{l}.bh"])
                getattr(rnn, f"bias_hh_l{l}").copy_(bhh)
        out = torch.nn.Linear(H, V).to(dtype)
        out.weight.copy_(t(p["out.W"]).T)
        out.bias.copy_(t(p["out.b"]))
        emb = None
        if cfg.embed:
            emb = torch.nn.Embedding(V, cfg.embed).to(dtype)
            emb.weight.copy_(t(p["embed"]))
    return emb, rnn, out


class LayerNormLSTM:
    """The layer-normalised LSTM in PyTorch's operations, called as nn.LSTM is: (T, B, D) input and
    an (h, c) state of (L, B, H) each, or None for zeros. Per layer (Wx, Wh, b, gain, cgain, cbias):
    a = x Wx + h Wh; z = gain * layer_norm of each gate block + b; c' = f c + i g;
    h' = o tanh(layer_norm(c') * cgain + cbias); and zoneout's expectation with rates zc, zh:
    c = zc c + (1 - zc) c', h = zh h + (1 - zh) h' (c', h' themselves without zoneout)."""

    def __init__(self, layers: list, zc: float = 0.0, zh: float = 0.0):
        self.layers, self.zc, self.zh = layers, zc, zh

    def __call__(self, inp, state):
        import torch
        from torch.nn.functional import layer_norm

        from charrnn.reference import LN_EPS
        T, B, _ = inp.shape
        H = self.layers[0][1].shape[0]
        if state is None:
            state = (inp.new_zeros(len(self.layers), B, H), inp.new_zeros(len(self.layers), B, H))
        hs, cs, x = list(state[0]), list(state[1]), inp
        for l, (Wx, Wh, b, gain, cgain, cbias) in enumerate(self.layers):
            xw, h, c, outs = x @ Wx, hs[l], cs[l], []
            for s in range(T):
                a = (xw[s] + h @ Wh).reshape(B, 4, H)
                z = layer_norm(a, (H,), eps=LN_EPS).reshape(B, 4 * H) * gain + b
                i, f, g, o = torch.sigmoid(z[:, :H]), torch.sigmoid(z[:, H:2 * H]), torch.tanh(z[:, 2 * H:3 * H]), \
                    torch.sigmoid(z[:, 3 * H:])
                c_new = f * c + i * g
                h_new = o * torch.tanh(layer_norm(c_new, (H,), weight=cgain, bias=cbias, eps=LN_EPS))
                c = self.zc * c + (1 - self.zc) * c_new
                h = self.zh * h + (1 - self.zh) * h_new
                outs.append(h)
            x, hs[l], cs[l] = torch.stack(outs), h, c
        return x, (torch.stack(hs), torch.stack(cs))


def torch_bits_per_char(ck: ckpt.Checkpoint, codes: np.ndarray, dtype_name: str = "float64",
                        window: int = 4096) -> float:
    """Mean -log2 p(codes[t+1] | codes[:t+1]) under PyTorch, one stream, state carried."""
    import torch
    dtype = {"float64": torch.float64, "float32": torch.float32}[dtype_name]
    emb, rnn, out = torch_model(ck, dtype)
    V = ck.config.vocab_size
    total, state = 0.0, None
    x_all = torch.tensor(codes[:-1].astype(np.int64))
    y_all = torch.tensor(codes[1:].astype(np.int64))
    with torch.no_grad():
        for s in range(0, len(x_all), window):
            x = x_all[s:s + window]
            inp = emb(x) if emb is not None else torch.nn.functional.one_hot(x, V).to(dtype)
            h, state = rnn(inp[:, None, :], state)
            logp = torch.log_softmax(out(h[:, 0]).to(torch.float64), dim=1)
            total -= float(logp[torch.arange(len(x)), y_all[s:s + window]].sum())
    return total / len(x_all) / math.log(2)


def charrnn_bits_per_char(ck: ckpt.Checkpoint, codes: np.ndarray) -> float:
    """What `charrnn eval` reports: the CPU backend through evaluate()."""
    from charrnn.backends.cpu import CpuBackend
    from charrnn.evaluate import evaluate, summary
    nats, n = evaluate(CpuBackend(ck.config, ck.params), codes)
    return summary(nats, n)["bits_per_char"]


def codes_to_score(ck: ckpt.Checkpoint, file: str | None, which: str) -> tuple[np.ndarray, str]:
    """The text `charrnn eval` would score: FILE, or the split of the checkpoint's training text."""
    vocab = ck.vocab
    if file is not None:
        return vocab.encode(read_input(file, byte_mode=vocab.byte_mode), skip_unknown=True), file
    src = ck.train_args.get("source") or {}
    path = src.get("path")
    if not path or not Path(path).is_file():
        raise SystemExit("this checkpoint's training text is not at hand; name a FILE")
    codes = vocab.encode(read_input(path, byte_mode=vocab.byte_mode, encoding=src.get("encoding", "utf-8")),
                         skip_unknown=True)
    _, val, test = split(codes, ck.train_args.get("val_frac", 0.05), ck.train_args.get("test_frac", 0.05))
    return (val if which == "val" else test), f"{which} split of {path}"


def crosscheck(checkpoint: str, file: str | None = None, which: str = "val", dtype: str = "float64") -> dict:
    ck = ckpt.load(ckpt.resolve(checkpoint))
    codes, what = codes_to_score(ck, file, which)
    ours = charrnn_bits_per_char(ck, codes)
    theirs = torch_bits_per_char(ck, codes, dtype)
    return {"checkpoint": checkpoint, "text": what, "chars": int(len(codes) - 1), "cell": ck.config.cell,
            "charrnn_bits_per_char": ours, "torch_bits_per_char": theirs, "torch_dtype": dtype,
            "relative_difference": abs(ours - theirs) / theirs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a .safetensors checkpoint or a run directory")
    ap.add_argument("file", nargs="?", help="a text to score (default: the checkpoint's own split)")
    ap.add_argument("--split", default="val", choices=["val", "test"])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="PyTorch's dtype")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    res = crosscheck(a.checkpoint, a.file, a.split, a.dtype)
    if a.json:
        print(json.dumps(res))
    else:
        print(f"charrnn {res['charrnn_bits_per_char']:.6f}  torch ({a.dtype}) {res['torch_bits_per_char']:.6f}  "
              f"bits/char, relative difference {res['relative_difference']:.2e}, {res['chars']:,} characters "
              f"of {res['text']}")


if __name__ == "__main__":
    main()
