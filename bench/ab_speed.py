"""Two builds of charrnn side by side: chars/s of a `before` tree against this one, same run.

For a change that must not cost speed (a kernel fix, a redesign): check the old commit out
beside this tree, then alternate timed windows between a worker of each, so the machine's
noise falls on both alike. Both workers are this tree's bench/speed.py worker (the same
measuring code, whatever the older tree's speed.py knows), each importing its own tree's
charrnn. Reports the median chars/s of each and after/before per config and metric. `--cell`
runs configs a-d's sizes with a GRU or RNN instead of the LSTM.

    git worktree add /tmp/before <commit>
    python bench/ab_speed.py /tmp/before --configs a,b,c,d --threads 2
    python bench/ab_speed.py /tmp/before --configs a,b --cell gru --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import speed
from speed import CONFIGS, EVAL_WINDOW, TEXT, Worker, measure


class TreeWorker(Worker):
    """This tree's speed.py charrnn worker on the charrnn of `root` (PYTHONPATH goes first)."""

    def __init__(self, label: str, root: Path, cfg: tuple, threads: int):
        env = speed.child_env(BENCH_THREADS=str(threads), CHARRNN_THREADS=str(threads),
                              OMP_NUM_THREADS=str(threads), PYTHONPATH=str(root))
        self.p = subprocess.Popen([sys.executable, speed.__file__, "--worker", "charrnn", ",".join(map(str, cfg))],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        self.side = label
        self._read()


def compare(before: Path, name: str, threads: int, windows: int, target: float, cell: str = "lstm") -> dict:
    spec = (*CONFIGS[name], cell)
    ws = [TreeWorker("before", before, spec, threads), TreeWorker("after", speed.ROOT, spec, threads)]
    res = {}
    try:
        res["train"] = measure(ws, "train", lambda w, k: (k,), windows, target, 0.2)
        res["eval"] = measure(ws, "eval", lambda w, k: (min(EVAL_WINDOW * 4 * k, TEXT // 2),), windows, target / 2, 0.2)
        if name == "b":
            for batch in (1, 64):
                res[f"sample{batch}"] = measure(ws, "sample", lambda w, k, b=batch: (b, 20 * k), windows, target / 2, 0.2)
    finally:
        for w in ws:
            w.close()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path, help="a checkout of the build to compare against")
    ap.add_argument("--configs", default="a,b,c,d")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--windows", type=int, default=7)
    ap.add_argument("--target", type=float, default=0.6, help="seconds per timed window")
    ap.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    a = ap.parse_args()
    print("| config | cell | threads | metric | before chars/s | after chars/s | after/before |")
    print("|---|---|---|---|---|---|---|")
    for threads in (int(t) for t in a.threads.split(",")):
        for name in a.configs.split(","):
            for metric, rates in compare(a.before.resolve(), name, threads, a.windows, a.target, a.cell).items():
                b, f = statistics.median(rates["before"]), statistics.median(rates["after"])
                print(f"| {name} {CONFIGS[name]} | {a.cell} | {threads} | {metric} | {b:,.0f} | {f:,.0f} "
                      f"| {f / b:.3f} |", flush=True)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main()
