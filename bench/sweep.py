"""A recorded sweep of training settings on one text (issue 19): each entry is `charrnn train`
with extra flags for a fixed wall-clock budget, scored afterwards by `charrnn eval`.

    python bench/sweep.py --minutes 5 --threads 1 --jobs 2 --seed 1 \\
        base="" lr01="--lr 0.01" big="--hidden 256 --lr 0.01"
    python bench/sweep.py --minutes 10 --threads 2 --seeds 1,2 new="--lr 0.02"

Runs `--jobs` trainings side by side, each with CHARRNN_THREADS=--threads, so entries of one
batch share the machine's load alike. Prints a markdown table (config, seed, steps, epochs
reached at the best checkpoint, best val, test, chars/s) and appends one JSON line per run to
--log. Give the machine to the sweep alone: other work on the cores means fewer steps.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def charrnn(*args: str, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start `charrnn ARGS` with this interpreter; its stderr goes to `log` (or nowhere)."""
    cmd = [sys.executable, "-m", "charrnn", *args]
    if log is None:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    with open(log, "w") as err:          # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)


def score(run: Path, split: str) -> float:
    p = charrnn("eval", str(run), "--split", split, "--json")
    out, _ = p.communicate()
    if p.returncode:
        raise RuntimeError(f"eval of {run} failed")
    return json.loads(out)["bits_per_char"]


def summarize(name: str, flags: str, seed: int, run: Path, wall: float) -> dict:
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    vals = [r for r in records if "val_bpc" in r]
    # the best checkpoint's validation: the raw weights' or, where kept, the average's (best.safetensors
    # keeps the better of the two)
    best = min(vals, key=lambda r: min(r["val_bpc"], r.get("val_bpc_average", r["val_bpc"])))
    last = max((r for r in records if "chars" in r), key=lambda r: r["step"])
    return {
        "name": name, "flags": flags, "seed": seed, "steps": last["step"], "epochs": round(last["epoch"], 2),
        "best_epoch": round(best["epoch"], 2), "val_bpc": round(score(run, "val"), 4),
        "test_bpc": round(score(run, "test"), 4), "chars_per_s": round(last["chars"] / last["elapsed_s"]),
        "wall_s": round(wall, 1), "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("entries", nargs="+", help='name="flags" pairs')
    ap.add_argument("--text", default="shakespeare")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jobs", type=int, default=1, help="trainings side by side")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    ap.add_argument("--log", type=Path, default=Path("sweep.jsonl"))
    args = ap.parse_args()

    todo = []
    for e in args.entries:
        name, _, flags = e.partition("=")
        for seed in [int(s) for s in args.seeds.split(",")]:
            todo.append((name, flags, seed))
    root = args.keep or Path(tempfile.mkdtemp(prefix="charrnn-sweep-"))
    root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CHARRNN_THREADS=str(args.threads))
    rows = []
    while todo:
        batch, todo = todo[:args.jobs], todo[args.jobs:]
        started = []
        for name, flags, seed in batch:
            run = root / f"{name}-s{seed}"
            cmd = ["train", args.text, "--minutes", f"{args.minutes:g}", "--seed", str(seed), "--out", str(run),
                   *shlex.split(flags)]
            print("$ CHARRNN_THREADS=%d charrnn %s" % (args.threads, shlex.join(cmd)), file=sys.stderr, flush=True)
            started.append((name, flags, seed, run, time.time(), charrnn(*cmd, env=env, log=root / f"{name}-s{seed}.log")))
        for name, flags, seed, run, t0, p in started:
            p.wait()
            wall = time.time() - t0
            if p.returncode:
                print(f"{name} seed {seed}: train exited {p.returncode}", file=sys.stderr)
                continue
            row = summarize(name, flags, seed, run, wall)
            rows.append(row)
            with open(args.log, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), file=sys.stderr, flush=True)
    print("| config | flags | seed | steps | epochs (best at) | val | test | chars/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | `{r['flags']}` | {r['seed']} | {r['steps']:,} | {r['epochs']} ({r['best_epoch']}) "
              f"| {r['val_bpc']:.4f} | {r['test_bpc']:.4f} | {r['chars_per_s']:,} |")


if __name__ == "__main__":
    main()
