"""Sampling throughput: characters per second for --num-samples 1 and a batch, on a randomly
initialised model (2x512 LSTM, 65 symbols by default), through the same path as `charrnn sample`.

    flock /tmp/charrnn-cpu.lock .venv/bin/python bench/sample_throughput.py [--hidden 512 --layers 2] [--norm layer]
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np

from charrnn.backends.cpu import CpuBackend
from charrnn.corpus import Vocab
from charrnn.model import ModelConfig, init_params
from charrnn.sample import Decoding, write_samples


def chars_per_second(be, vocab, n: int, length: int) -> float:
    prime = vocab.encode("\n").astype(np.int64)
    t0 = time.perf_counter()
    write_samples(be, vocab, io.BytesIO(), prime, Decoding(length=length, temperature=0.8, seed=1, batch=n))
    return n * length / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--norm", choices=("none", "layer"), default="none", help="layer: a layer-normalised LSTM")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=3.0, help="rough time per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    chars = "".join(chr(32 + i) for i in range(a.vocab - 1)) + "\n"
    vocab = Vocab(chars="".join(sorted(chars)))
    cfg = ModelConfig(vocab_size=a.vocab, hidden=a.hidden, layers=a.layers, dropout=0.0, norm=a.norm)
    be = CpuBackend(cfg, init_params(cfg, np.random.default_rng(0)))
    one = chars_per_second(be, vocab, 1, 50)                      # warm caches, size the runs
    many = chars_per_second(be, vocab, a.batch, 10)
    len_one, len_many = max(50, int(one * a.seconds)), max(10, int(many * a.seconds / a.batch))
    ones, manys = [], []
    for _ in range(a.rounds):                 # alternate, keep the best: a shared machine is noisy
        ones.append(chars_per_second(be, vocab, 1, len_one))
        manys.append(chars_per_second(be, vocab, a.batch, len_many))
    one, many = max(ones), max(manys)
    print(f"{a.layers}x{a.hidden} {cfg.cell}{' (layer-normalised)' if a.norm == 'layer' else ''}, vocab {a.vocab}: --num-samples 1: {one:,.0f} chars/s; "
          f"--num-samples {a.batch}: {many:,.0f} chars/s; ratio {many / one:.1f}x")


if __name__ == "__main__":
    main()
