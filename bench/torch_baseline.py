"""PyTorch's standard LSTM trained under charrnn's protocol, for the quality comparison.

The same data pipeline as `charrnn train` (vocabulary, 90/5/5 split by position, B contiguous
streams read in windows of T with the state carried and detached), nn.LSTM + Linear on one-hot
input, cross-entropy, global-norm clipping at 5, Adam; after every epoch (or at the end of the
budget) the whole validation split is scored as one stream with the state carried, as charrnn
does; the best validation model is scored on the test split at the end.

    python bench/torch_baseline.py tinyshakespeare.txt --minutes 10 --json > torch.json

Defaults are the protocol of issue 19: 2x128, T50, B50, Adam 2e-3, no dropout, no schedule.
Prints a line per validation on stderr; with --json, one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from charrnn.batches import Batches  # noqa: E402
from charrnn.corpus import Vocab, read_input, split  # noqa: E402


def score(torch, lstm, lin, codes: np.ndarray, V: int, window: int = 4096) -> float:
    """bits/char of one stream over codes, state carried."""
    total, state = 0.0, None
    x_all = torch.tensor(codes[:-1].astype(np.int64))
    y_all = torch.tensor(codes[1:].astype(np.int64))
    with torch.inference_mode():
        for s in range(0, len(x_all), window):
            x = torch.nn.functional.one_hot(x_all[s:s + window], V).float()
            out, state = lstm(x[:, None, :], state)
            total += float(torch.nn.functional.cross_entropy(lin(out[:, 0]), y_all[s:s + window], reduction="sum"))
    return total / len(x_all) / math.log(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("text")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--clip", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    text = read_input(a.text)
    vocab = Vocab.from_text(text)
    V = vocab.size
    train, val, test = split(vocab.encode(text), 0.05, 0.05)
    batches = Batches(train, a.batch_size, a.seq_len)
    lstm, lin = torch.nn.LSTM(V, a.hidden, a.layers), torch.nn.Linear(a.hidden, V)
    params = list(lstm.parameters()) + list(lin.parameters())
    opt = torch.optim.Adam(params, lr=a.lr)
    t0, chars, epoch, best, curve = time.time(), 0, 0, (math.inf, None), []
    budget = a.minutes * 60
    while time.time() - t0 < budget:
        state = None
        for k in range(batches.n_windows):
            x, y = batches.window(k)
            out, (h, c) = lstm(torch.nn.functional.one_hot(torch.tensor(x), V).float(), state)
            loss = torch.nn.functional.cross_entropy(lin(out).reshape(-1, V), torch.tensor(y).reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, a.clip)
            opt.step()
            state = (h.detach(), c.detach())
            chars += x.size
            if time.time() - t0 >= budget:
                break
        epoch += (k + 1) / batches.n_windows
        v = score(torch, lstm, lin, val, V)
        curve.append({"epoch": round(epoch, 3), "val_bpc": v, "train_bpc_last": float(loss) / math.log(2),
                      "minutes": (time.time() - t0) / 60})
        print(f"epoch {epoch:.2f}  val {v:.4f} bpc  {(time.time() - t0) / 60:.1f} min", file=sys.stderr, flush=True)
        if v < best[0]:
            best = (v, (copy.deepcopy(lstm.state_dict()), copy.deepcopy(lin.state_dict())))
    elapsed = time.time() - t0
    lstm.load_state_dict(best[1][0])
    lin.load_state_dict(best[1][1])
    res = {"best_val_bpc": best[0], "test_bpc": score(torch, lstm, lin, test, V), "epochs": round(epoch, 3),
           "train_chars_per_s": chars / elapsed, "minutes": elapsed / 60, "torch": torch.__version__,
           "config": vars(a), "curve": curve}
    print(json.dumps(res) if a.json else
          f"best val {res['best_val_bpc']:.4f}  test {res['test_bpc']:.4f} bits/char  {res['epochs']} epochs  "
          f"{res['train_chars_per_s']:,.0f} chars/s")


if __name__ == "__main__":
    main()
