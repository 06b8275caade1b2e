"""What the training diagnostics cost (issue 17): chars/s of the default configuration with
`--diag` on and off, in short runs alternated in one process, plus the time of one diagnostics
point (tensor norms and ratios, the layer probe, the histograms) measured on its own.

    python bench/diag_cost.py                      # 3 pairs of 150-step runs on tinyshakespeare
    python bench/diag_cost.py --pairs 1 --steps 40 # a smoke run

Each run is a fresh Trainer with TrainOptions() defaults (the default LSTM, batch 50 x 50, Adam)
except --max-steps and the diagnostics switch; --diag-every is the default 50 unless given. The
speed is characters trained over training time (the trainer's own clock; the closing validation
pass, the same in both arms, is left out). Kernels are compiled by a warm-up run first.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from charrnn.diagnostics import histograms, layer_stats, norms, update_ratios  # noqa: E402
from charrnn.rundir import prepare_out_dir
from charrnn.train import Trainer, TrainOptions  # noqa: E402


def one_run(text: str, steps: int, diag: bool, every: int) -> tuple[float, Trainer]:
    out = prepare_out_dir(tempfile.mkdtemp(prefix="diagcost-"))
    t = Trainer(TrainOptions(max_steps=steps, diag=diag, diag_every=every, device="cpu"), text, out,
                show_progress=False)
    t.sample_chars = 0
    r = t.run()
    return t.progress.chars_seen / r["elapsed_s"], t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", default=os.path.join(os.environ.get("CHARRNN_CORPORA", "/work/shared/corpora"),
                                                   "tinyshakespeare.txt"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--every", type=int, default=TrainOptions().diag_every)
    a = ap.parse_args()
    text = Path(a.text).read_text(encoding="utf-8")
    one_run(text, 20, True, 10)                                   # compile and warm up
    speeds: dict[bool, list[float]] = {True: [], False: []}
    last = None
    for k in range(a.pairs):
        for diag in ((True, False) if k % 2 == 0 else (False, True)):
            cps, t = one_run(text, a.steps, diag, a.every)
            speeds[diag].append(cps)
            print(f"pair {k}: diag {'on ' if diag else 'off'} {cps:,.0f} chars/s", file=sys.stderr)
            if diag:
                last = t
    reps = 10

    def timed(f) -> float:
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        return (time.perf_counter() - t0) / reps * 1e3
    p = last.be.params_host()
    before = p.flat.copy()
    tensors_ms = timed(lambda: (norms(last.be.grad_host()), p.flat.copy(), update_ratios(before, p), norms(p)))
    probe_ms = timed(lambda: layer_stats(last.cfg, p, last._probe))
    hist_ms = timed(lambda: histograms(p))
    on, off = statistics.median(speeds[True]), statistics.median(speeds[False])
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{a.pairs} pairs of {a.steps}-step runs, --diag-every {a.every}")
    print(f"diag on : median {on:,.0f} chars/s  (runs: {', '.join(f'{v:,.0f}' for v in speeds[True])})")
    print(f"diag off: median {off:,.0f} chars/s  (runs: {', '.join(f'{v:,.0f}' for v in speeds[False])})")
    print(f"on/off: {on / off:.3f}")
    print(f"one diagnostics point: tensor norms and ratios {tensors_ms:.1f} ms, layer probe {probe_ms:.1f} ms; "
          f"weight histograms (validations only) {hist_ms:.1f} ms")


if __name__ == "__main__":
    main()
