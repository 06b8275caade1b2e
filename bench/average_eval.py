"""Raw against averaged weights of runs trained with `--average ema` (issue 29), statically and
dynamically: since the average only shadows the raw weights, one such run gives both models,
the raw one being what the same run without averaging would have trained.

    python bench/average_eval.py /tmp/runs/ts-s1 /tmp/runs/ts-s2 [--no-dynamic] [--log FILE]

For each run directory, the last checkpoint's raw weights and its average are written weights-only
beside it (raw.safetensors, average.safetensors), then each is scored by `charrnn eval --split
val|test --json` and `charrnn eval --split test --dynamic --json` (the default rms rule), and the
CPU seconds of each eval process are taken from the kernel (user + system: the machine is shared,
wall time is not the cost). The dynamic eval's first run on each file includes computing the
training-gradient statistics it then keeps beside the file (about 15 s of CPU). Prints a markdown
table and, with --log, appends one JSON line per model.
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


def split_models(run: Path) -> dict[str, Path]:
    """The last checkpoint's raw and averaged weights as two weights-only files in `run`."""
    last = ckpt.load(run / "last.safetensors")
    if last.average is None:
        raise SystemExit(f"{run}: the last checkpoint holds no averaged weights (train with --average ema)")
    out = {}
    for name, flat in (("raw", last.params.flat), ("average", last.average)):
        w = ckpt.weights_only(dataclasses.replace(last, params=Params(last.config, flat.copy())),
                              {"weights": name})
        ckpt.save(run / f"{name}.safetensors", w)
        out[name] = run / f"{name}.safetensors"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--no-dynamic", action="store_true", help="static evaluation only")
    ap.add_argument("--log", type=Path, default=None)
    a = ap.parse_args()
    rows = []
    for run in a.runs:
        step = ckpt.load(run / "last.safetensors").progress["step"]
        for name, model in split_models(run).items():
            row = {"run": str(run), "weights": name, "step": step}
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
