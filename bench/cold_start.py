"""The first minute on a fresh install (issue 15): time to first output with a cold Numba cache.

Each measurement is a new process with its own empty NUMBA_CACHE_DIR (cold) and then again on
the cache that run filled (warm), in an empty directory with $CHARRNN_CORPORA unset and an
empty $CHARRNN_CACHE, as on a fresh machine:

- sample: `charrnn sample --length 200 --seed 1` with the shipped model; the time until its
  first character reaches stdout, and until the process ends;
- train: `charrnn train shakespeare`, the real command line, until its first training step
  (forward, backward, clipping, the Adam update) has returned; a hook stops the process there.

    python bench/cold_start.py              # two rounds of each (~2-3 min on two cores)
    python bench/cold_start.py --rounds 1
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Runs the CLI in-process and ends it right after the first training step, printing when.
TRAIN_HOOK = """
import os, sys, time
from charrnn import train
first = train.Trainer._train_step
def once(self, *a, **k):
    r = first(self, *a, **k)
    sys.stderr.write(f"FIRST_STEP_DONE {time.time():.6f}\\n"); sys.stderr.flush()
    os._exit(0)
train.Trainer._train_step = once
sys.argv = ["charrnn", "train", "shakespeare", "--out", "run"]
from charrnn.cli import main
main()
"""


def env_for(cache: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CHARRNN_CORPORA", "CHARRNN_CATALOG")}
    env.update(NUMBA_CACHE_DIR=str(cache), CHARRNN_CACHE=str(work / "corpora"), PYTHONUNBUFFERED="1")
    return env


def time_sample(env: dict, cwd: Path) -> tuple[float, float, list[str]]:
    t0 = time.time()
    p = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", "--length", "200", "--seed", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    p.stdout.read(1)
    first = time.time() - t0
    p.stdout.read()
    err = p.stderr.read().decode()
    p.wait()
    return first, time.time() - t0, err.splitlines()


def time_train(env: dict, cwd: Path) -> tuple[float, list[str]]:
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", TRAIN_HOOK], capture_output=True, cwd=cwd, env=env, text=True)
    lines = r.stderr.splitlines()
    done = [float(ln.split()[1]) for ln in lines if ln.startswith("FIRST_STEP_DONE")]
    if r.returncode != 0 or not done:
        raise SystemExit(f"train failed: {r.stderr[-1000:]}")
    return done[0] - t0, [ln for ln in lines if not ln.startswith("FIRST_STEP_DONE")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    print(f"cpu: {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    for rnd in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="charrnn-cold-") as tmp:
            tmp = Path(tmp)
            for what in ("sample", "train"):
                cache, work = tmp / f"numba-{what}", tmp / f"work-{what}"
                cache.mkdir()
                work.mkdir()
                env = env_for(cache, work)
                for state in ("cold", "warm"):
                    if what == "sample":
                        first, total, notes = time_sample(env, work)
                        print(f"round {rnd + 1} sample {state}: first character {first:.2f} s, "
                              f"200 characters {total:.2f} s; stderr: {notes}")
                    else:
                        first, notes = time_train(env, work)
                        print(f"round {rnd + 1} train  {state}: first step done {first:.2f} s; stderr: {notes}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
