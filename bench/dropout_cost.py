"""What dropout costs a training epoch: whole `charrnn train` processes, with and without it.

Runs `charrnn train TEXT --max-epochs 1 --val-frac 0.01 --test-frac 0.01 --dropout P` for
P = 0 and P = 0.1 in alternation (so both see the same machine load), `--runs` times each, and
prints each process's wall and CPU seconds and the overhead of the dropout runs (median over
median).
With `--before DIR` (a checkout of older code, e.g. `git archive main | tar -x -C DIR`) the
older code runs too, interleaved with this tree's, so before and after share the session.

    python bench/dropout_cost.py                      # 2 runs each, this tree
    python bench/dropout_cost.py --before /tmp/before # older code alternated with this tree
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", default=os.path.join(os.environ.get("CHARRNN_CORPORA", "/work/shared/corpora"),
                                                   "tinyshakespeare.txt"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--before", type=Path, help="a checkout of the older code to alternate with this tree")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("extra", nargs="*", help="more `charrnn train` flags (after --)")
    args = ap.parse_args()
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
