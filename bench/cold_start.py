"""The first minute on a fresh install (issues 15, 28): time to first output with a cold Numba cache.

Each measurement is a new process with its own empty NUMBA_CACHE_DIR (cold) and then again on
the cache that run filled (warm), in an empty directory with $CHARRNN_CORPORA unset and an
empty $CHARRNN_CACHE, as on a fresh machine:

- sample: `charrnn sample --length 200 --seed 1` with the shipped model; the time until its
  first character reaches stdout, and until the process ends;
- train: `charrnn train shakespeare`, the real command line, until its first training step
  (forward, backward, clipping, the Adam update) has returned; a hook stops the process there.

Besides wall-clock seconds it reports the process's CPU seconds: compiling is one thread, so on
a machine shared with other work the CPU time is the better estimate of the wall time alone
(sample's CPU time covers the whole process, train's the time up to the first step).

    python bench/cold_start.py              # three rounds of each (~2-3 min on two cores), then the
                                            # median and spread (min-max) of each figure
    python bench/cold_start.py --rounds 5 --only sample
    python bench/cold_start.py --src /tmp/old --corpora DIR   # another source tree (A/B), e.g.
                                            # `git archive main | tar -x -C /tmp/old`; one without the
                                            # shipped corpus needs DIR holding tinyshakespeare.txt
"""
from __future__ import annotations

import argparse
import os
import statistics
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
    sys.stderr.write(f"FIRST_STEP_DONE {time.time():.6f} {time.process_time():.3f}\\n"); sys.stderr.flush()
    os._exit(0)
train.Trainer._train_step = once
sys.argv = ["charrnn", "train", "shakespeare", "--out", "run"]
from charrnn.cli import main
main()
"""


MODEL = Path(__file__).resolve().parent.parent / "corpora" / "shakespeare.safetensors"


def env_for(cache: Path, work: Path, src: Path | None, corpora: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CHARRNN_CORPORA", "CHARRNN_CATALOG")}
    env.update(NUMBA_CACHE_DIR=str(cache), CHARRNN_CACHE=str(work / "corpora"), PYTHONUNBUFFERED="1")
    if src is not None:
        env["PYTHONPATH"] = str(src)
    if corpora is not None:
        env["CHARRNN_CORPORA"] = str(corpora)
    return env


def time_sample(env: dict, cwd: Path, named: bool) -> tuple[float, float, float, list[str]]:
    """Seconds to the first character and to the end, the process's CPU seconds, its stderr."""
    t0 = time.time()
    model = [str(MODEL)] if named else []        # a tree without the zoo is given the file
    p = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", *model, "--length", "200", "--seed", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    p.stdout.read(1)
    first = time.time() - t0
    p.stdout.read()
    err = p.stderr.read().decode()
    _, _, usage = os.wait4(p.pid, 0)
    return first, time.time() - t0, usage.ru_utime + usage.ru_stime, err.splitlines()


def time_train(env: dict, cwd: Path) -> tuple[float, float, list[str]]:
    """Seconds to the end of the first step, the CPU seconds spent by then, stderr."""
    t0 = time.time()
    r = subprocess.run([sys.executable, "-c", TRAIN_HOOK], capture_output=True, cwd=cwd, env=env, text=True)
    lines = r.stderr.splitlines()
    done = [ln.split()[1:] for ln in lines if ln.startswith("FIRST_STEP_DONE")]
    if r.returncode != 0 or not done:
        raise SystemExit(f"train failed: {r.stderr[-1000:]}")
    return float(done[0][0]) - t0, float(done[0][1]), [ln for ln in lines if not ln.startswith("FIRST_STEP_DONE")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--src", type=Path, default=None, help="run this source tree instead (PYTHONPATH)")
    ap.add_argument("--corpora", type=Path, default=None, help="set CHARRNN_CORPORA to this")
    ap.add_argument("--only", choices=["sample", "train"], default=None)
    args = ap.parse_args()
    print(f"source: {args.src or 'this tree'}")
    print(f"cpu: {os.cpu_count()} cores; load average before: {os.getloadavg()[0]:.2f}")
    figures: dict = {}       # (what, state) -> {measure: a value per round}
    for rnd in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="charrnn-cold-") as tmp:
            tmp = Path(tmp)
            for what in [args.only] if args.only else ["sample", "train"]:
                cache, work = tmp / f"numba-{what}", tmp / f"work-{what}"
                cache.mkdir()
                work.mkdir()
                env = env_for(cache, work, args.src, args.corpora)
                for state in ("cold", "warm"):
                    load = os.getloadavg()[0]
                    if what == "sample":
                        first, total, cpu, notes = time_sample(env, work, named=args.src is not None)
                        keep(figures, "sample", state, first=first, cpu=cpu)
                        print(f"round {rnd + 1} sample {state}: first character {first:.2f} s, "
                              f"200 characters {total:.2f} s, CPU {cpu:.2f} s, load {load:.1f}; stderr: {notes}")
                    else:
                        first, cpu, notes = time_train(env, work)
                        keep(figures, "train", state, first=first, cpu=cpu)
                        print(f"round {rnd + 1} train  {state}: first step done {first:.2f} s, "
                              f"CPU {cpu:.2f} s, load {load:.1f}; stderr: {notes}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    print("\n| command | cache | first output, wall: median (min-max) | CPU: median (min-max) |")
    print("|---|---|---|---|")
    for (what, state), vals in figures.items():
        print(f"| {'sample --length 200, first character' if what == 'sample' else 'train shakespeare, first step'} "
              f"| {state} | {spread(vals['first'])} | {spread(vals['cpu'])} |")


def keep(figures: dict, what: str, state: str, **values: float) -> None:
    for name, v in values.items():
        figures.setdefault((what, state), {}).setdefault(name, []).append(v)


def spread(vals: list) -> str:
    return f"{statistics.median(vals):.1f} s ({min(vals):.1f}-{max(vals):.1f}, {len(vals)} rounds)"


if __name__ == "__main__":
    main()
