"""What validation costs a training run, and what scoring it as several streams changes.

Trains one epoch of tinyshakespeare with the default options (90/5/5 split), timing the training
steps and the end-of-epoch validation apart; validation runs once per epoch, so its share of an
epoch is its share of a run of any length. Then, on the model that epoch trained, times
`evaluate` over the validation split with 1, 4, 8, 16 and 32 streams and gives each figure's
difference from the one-stream score (`charrnn eval`'s reference number).

    python bench/validation_cost.py                 # ~1-2 minutes on 2 idle cores
    python bench/validation_cost.py --epochs 2      # a better-trained model for the differences
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from charrnn.corpus import load_corpus
from charrnn.evaluate import evaluate, summary
from charrnn.train import Trainer, TrainOptions


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=os.path.join(os.environ.get("CHARRNN_CORPORA", "/work/shared/corpora"),
                                                   "tinyshakespeare.txt"))
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--streams", default="1,4,8,16,32")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as out:
        opts = TrainOptions(max_epochs=args.epochs, val_streams=1, out=out)
        t = Trainer(opts, load_corpus(args.text, spill_dir=Path(out)), Path(out), show_progress=False)
        t.sample_chars = 0                          # time validation alone, not the report's samples
        spent = {"wall": 0.0, "cpu": 0.0, "n": 0}
        validate = t.validate

        def timed(**kw):
            w, c = time.perf_counter(), _cpu()
            v = validate(**kw)
            spent["wall"] += time.perf_counter() - w
            spent["cpu"] += _cpu() - c
            spent["n"] += 1
            return v
        t.validate = timed
        w0, c0 = time.perf_counter(), _cpu()
        res = t.run()
        wall, cpu = time.perf_counter() - w0, _cpu() - c0
        n_val = len(t.val_codes) - 1
        print(f"{res['epochs']:.2f} epochs, {res['steps']} steps of {opts.batch_size}x{opts.seq_len}; "
              f"{spent['n']} validations of {n_val} chars at one stream", file=sys.stderr)
        for what, total, val in (("wall", wall, spent["wall"]), ("CPU", cpu, spent["cpu"])):
            print(f"{what:4s}: run {total:.1f} s, validation {val:.1f} s = {100 * val / total:.1f}% of the run")
        ref = None
        for s in (int(v) for v in args.streams.split(",")):
            w, c = time.perf_counter(), _cpu()
            bpc = summary(*evaluate(t.be, t.val_codes, streams=s))["bits_per_char"]
            w, c = time.perf_counter() - w, _cpu() - c
            ref = bpc if ref is None else ref
            print(f"streams {s:3d}: {w:6.2f} s wall {c:6.2f} s CPU  {bpc:.5f} bits/char  "
                  f"({bpc - ref:+.5f} against one stream)")


if __name__ == "__main__":
    main()
