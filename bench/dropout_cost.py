"""What dropout costs a training epoch: whole `charrnn train` processes, with and without it.

Runs `charrnn train TEXT --max-epochs 1 --val-frac 0.01 --test-frac 0.01 --dropout P` for
P = 0 and P = 0.1 in alternation (so both see the same machine load), `--runs` times each, and
prints each process's wall and CPU seconds and the overhead of the dropout runs (median over
median).
With `--before DIR` (a checkout of older code, e.g. `git archive main | tar -x -C DIR`) the
older code runs too, interleaved with this tree's, so before and after share the session.

    python bench/dropout_cost.py                      # 2 runs each, this tree
    python bench/dropout_cost.py --before /tmp/before # older code alternated with this tree
    python bench/dropout_cost.py --steps 40           # in this process: CPU seconds of training steps

`--steps N` times, instead, N training steps of the default model (2x128, T50 B50, random
characters from a 65-symbol vocabulary) with and without dropout in turn, five rounds, in one
process: the steps' own CPU cost, without start-up, validation and checkpoints around them.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def run_once(code_dir: Path, text: str, dropout: float, extra: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one training process that imports charrnn from
    `code_dir`. On a machine shared with other work the CPU seconds are the steadier figure."""
    env = dict(os.environ, PYTHONPATH=str(code_dir))
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "charrnn", "train", text, "--max-epochs", "1", "--val-frac", "0.01",
               "--test-frac", "0.01", "--out", str(Path(out) / "run"), "--dropout", str(dropout), *extra]
        r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        subprocess.run(cmd, env=env, cwd=code_dir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r1, t1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        return t1 - t0, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def steps_in_process(n: int, dropout: float, rounds: int = 5) -> None:
    import numpy as np
    from charrnn.backends.cpu import CpuBackend
    from charrnn.model import ModelConfig, init_params
    r = np.random.default_rng(0)
    x, y = r.integers(0, 65, (50, 50)), r.integers(0, 65, (50, 50))
    bes = {}
    for p in (0.0, dropout):
        cfg = ModelConfig(vocab_size=65, hidden=128, layers=2, dropout=p)
        bes[p] = CpuBackend(cfg, init_params(cfg, np.random.default_rng(0)))
        bes[p].train_step(x, y, bes[p].zero_state(50), 1)            # compile or load the kernels
    cpu = {p: [] for p in bes}
    for _ in range(rounds):
        for p, be in bes.items():
            c0 = time.process_time()
            for i in range(n):
                be.train_step(x, y, be.zero_state(50), i)
            cpu[p].append((time.process_time() - c0) / n * 1e3)
    a, b = statistics.median(cpu[0.0]), statistics.median(cpu[dropout])
    print(f"CPU ms per step, {rounds} rounds of {n}: dropout 0: {' '.join(f'{v:.1f}' for v in cpu[0.0])};  "
          f"dropout {dropout}: {' '.join(f'{v:.1f}' for v in cpu[dropout])};  overhead {100 * (b / a - 1):+.1f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=os.path.join(os.environ.get("CHARRNN_CORPORA", "/work/shared/corpora"),
                                                   "tinyshakespeare.txt"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--before", type=Path, help="a checkout of the older code to alternate with this tree")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=0, help="time this many steps in this process instead")
    ap.add_argument("extra", nargs="*", help="more `charrnn train` flags (after --)")
    args = ap.parse_args()
    if args.steps:
        steps_in_process(args.steps, args.dropout)
        return
    trees = [("before", args.before)] if args.before else []
    trees.append(("this tree", HERE))
    for name, tree in trees:      # compile once per tree, so no timed run pays Numba's cache fill
        run_once(tree, args.text, args.dropout, args.extra + ["--max-epochs", "0.02"])   # click keeps the last
    times = {(name, p): [] for name, _ in trees for p in (0.0, args.dropout)}
    for _ in range(args.runs):
        for name, tree in trees:
            for p in (0.0, args.dropout):
                wall, cpu = run_once(tree, args.text, p, args.extra)
                times[name, p].append((wall, cpu))
                print(f"{name:10s} dropout {p:<4}: {wall:6.1f} s wall, {cpu:6.1f} s CPU", file=sys.stderr, flush=True)
    for name, _ in trees:
        for i, what in enumerate(("wall", "CPU")):
            a = [r[i] for r in times[name, 0.0]]
            b = [r[i] for r in times[name, args.dropout]]
            print(f"{name:10s} {what:4s}  dropout 0: {' '.join(f'{s:.1f}' for s in a)} s;  dropout {args.dropout}: "
                  f"{' '.join(f'{s:.1f}' for s in b)} s;  overhead {100 * (statistics.median(b) / statistics.median(a) - 1):+.1f}%")

if __name__ == "__main__":
    main()
