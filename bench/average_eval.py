"""Raw against averaged weights of runs trained with `--average ema` (issue 29), statically and
dynamically: since the average only shadows the raw weights, one such run gives both models,
the raw one being what the same run without averaging would have trained.

    python bench/average_eval.py /tmp/runs/ts-s1 /tmp/runs/ts-s2 [--no-dynamic] [--log FILE]

For each run directory: its best checkpoint as it is (the raw weights or the average, whichever
validated better), and the other kind's weights from the last checkpoint, written weights-only
beside it (raw.safetensors or average.safetensors); the step column says where each comes from,
and the JSON lines give the step of each kind's best validation. Each is scored by `charrnn eval
--split val|test --json` and `charrnn eval --split test --dynamic --json` (the default rms rule),
and the CPU seconds of each eval process are taken from the kernel (user + system: the machine
is shared, wall time is not the cost; each process's start-up, about a second, is in both, so
the extra CPU per character of dynamic over static evaluation is given too). The dynamic eval's
first run on each file includes computing the training-gradient statistics it then keeps beside
the file (about 15 s of CPU). Prints a markdown table and, with --log, appends one JSON line per
model.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
from pathlib import Path

from charrnn import checkpoint as ckpt
from charrnn.model import Params


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def evaluate(model: Path, *flags: str) -> tuple[dict, float]:
    """`charrnn eval MODEL FLAGS --json`: its JSON and the CPU seconds it took."""
    c0 = cpu_children()
    r = subprocess.run([sys.executable, "-m", "charrnn", "eval", str(model), *flags, "--json"],
                       capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"eval {model} {' '.join(flags)} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout), cpu_children() - c0


def best_steps(run: Path) -> dict[str, tuple[int, float]]:
    """The step and figure of each kind's best validation in metrics.jsonl (raw, average)."""
    best: dict[str, tuple[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for kind, key in (("raw", "val_bpc"), ("average", "val_bpc_average")):
            if r.get(key) is not None and (kind not in best or r[key] < best[kind][1]):
                best[kind] = (r["step"], r[key])
    return best


def models(run: Path) -> dict[str, tuple[Path, int]]:
    """The run's best checkpoint as it is (the weights that scored better, raw or average), and
    the other kind's weights from the last checkpoint, written weights-only beside it."""
    best, last = ckpt.load(run / "best.safetensors"), ckpt.load(run / "last.safetensors")
    if last.average is None:
        raise SystemExit(f"{run}: the last checkpoint holds no averaged weights (train with --average ema)")
    kind = best.metrics.get("weights", "raw")
    other = "average" if kind == "raw" else "raw"
    flat = last.average if other == "average" else last.params.flat
    w = ckpt.weights_only(dataclasses.replace(last, params=Params(last.config, flat.copy())), {"weights": other})
    ckpt.save(run / f"{other}.safetensors", w)
    return {kind: (run / "best.safetensors", best.progress["step"]),
            other: (run / f"{other}.safetensors", last.progress["step"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--no-dynamic", action="store_true", help="static evaluation only")
    ap.add_argument("--log", type=Path, default=None)
    a = ap.parse_args()
    rows = []
    for run in a.runs:
        at = best_steps(run)
        for name, (model, step) in models(run).items():
            row = {"run": str(run), "weights": name, "step": step, "best_val_step": at[name][0],
                   "best_val_logged": at[name][1]}
            for split in ("val", "test"):
                res, cpu = evaluate(model, "--split", split)
                row[split], row[f"{split}_chars"], row[f"{split}_cpu_s"] = res["bits_per_char"], res["chars"], cpu
            if not a.no_dynamic:
                res, cpu = evaluate(model, "--split", "test", "--dynamic")
                row["test_dynamic"], row["test_dynamic_cpu_s"] = res["bits_per_char"], cpu
                row["dynamic"] = res.get("dynamic")
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            if a.log:
                with open(a.log, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print("| run | weights | step | val | test | test, dynamic | CPU s static / dynamic (test) | extra ms/char |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        dyn = r.get("test_dynamic")
        cost = "" if dyn is None else f"{r['test_cpu_s']:.1f} / {r['test_dynamic_cpu_s']:.1f}"
        extra = "" if dyn is None else f"{(r['test_dynamic_cpu_s'] - r['test_cpu_s']) / r['test_chars'] * 1e3:.2f}"
        print(f"| {Path(r['run']).name} | {r['weights']} | {r['step']} | {r['val']:.4f} | {r['test']:.4f} | "
              + ("" if dyn is None else f"{dyn:.4f}") + f" | {cost} | {extra} |")

if __name__ == "__main__":
    main()
