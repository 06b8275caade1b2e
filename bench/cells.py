"""Cells x depth on tinyshakespeare at equal parameter count and equal wall-clock budget.

Trains LSTM, GRU and plain RNN with 1, 2 and 3 layers through `charrnn train ... --minutes M`,
each sized (hidden units from `model.n_params`) to about the same number of parameters, all with
the same optimizer, learning rate, dropout, batch and window; then reads the best validation
bits/char from each run's metrics.jsonl and writes the "Cells" section of bench/RESULTS.md.

    flock /tmp/charrnn-cpu.lock python bench/cells.py --minutes 2.5 --params 250000

The reproduction of Karpathy, Johnson & Fei-Fei (2015), "Visualizing and understanding recurrent
networks", Table 1 in spirit: they found LSTM and GRU clearly ahead of the plain RNN, and depth >= 2
helping. Rerunning replaces the Cells section (notes included) with a fresh table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

from charrnn.model import ModelConfig, n_params

ROOT = Path(__file__).resolve().parent.parent
CELLS = ("lstm", "gru", "rnn")
DEPTHS = (1, 2, 3)
VOCAB = 65  # tinyshakespeare's characters; the sizing only needs it approximately


def hidden_for(cell: str, layers: int, target: int, vocab: int = VOCAB) -> int:
    """The hidden width whose parameter count is closest to `target` (n_params grows with H)."""
    def count(h: int) -> int:
        return n_params(ModelConfig(vocab_size=vocab, hidden=h, layers=layers, cell=cell))
    lo, hi = 1, 1
    while count(hi) < target:
        hi *= 2
    while hi - lo > 1:                   # bisect for the first H at or above target
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda h: abs(count(h) - target))


def best_val(metrics: Path) -> dict:
    """Best validation bits/char and how far the run got, from one run's metrics.jsonl."""
    recs = [json.loads(line) for line in metrics.read_text(encoding="utf-8").splitlines() if line.strip()]
    vals = [r for r in recs if r.get("val_bpc") is not None]
    last = [r for r in recs if "chars" in r][-1]
    best = min(vals, key=lambda r: r["val_bpc"])
    return {"best_val_bpc": best["val_bpc"], "best_step": best["step"], "steps": last["step"],
            "epochs": last["epoch"], "chars": last["chars"], "train_bpc": last["train_bpc"],
            "chars_per_s": last["chars"] / max(last["elapsed_s"], 1e-9)}


def train_args(corpus: str, cell: str, layers: int, hidden: int, a: argparse.Namespace, out: Path) -> list[str]:
    return ["train", corpus, "--cell", cell, "--layers", str(layers), "--hidden", str(hidden),
            "--dropout", str(a.dropout), "--lr", str(a.lr), "--batch-size", str(a.batch_size),
            "--seq-len", str(a.seq_len), "--val-every", str(a.val_every), "--minutes", str(a.minutes),
            "--seed", str(a.seed), "--device", "cpu", "--out", str(out)] + \
        (["--lr-floor", str(a.lr_floor)] if a.lr_floor is not None else [])


def charrnn(args: list[str], log: Path | None = None) -> None:
    """Run the CLI in a child process (the same interpreter, so PYTHONPATH pins the code under test)."""
    with open(log or os.devnull, "w") as f:
        subprocess.run([sys.executable, "-m", "charrnn", *args], check=True, stdout=f, stderr=subprocess.STDOUT)


def warm_up(corpus: str, a: argparse.Namespace, out: Path) -> None:
    """Compile every cell's kernels once so Numba's compile time is not charged to a timed run."""
    for cell in CELLS:
        charrnn(["train", corpus, "--cell", cell, "--layers", "2", "--hidden", "8", "--dropout", str(a.dropout),
                 "--max-steps", "2", "--batch-size", "4", "--seq-len", "8", "--device", "cpu",
                 "--out", str(out / f"warm-{cell}"), "--overwrite"], log=out / f"warm-{cell}.log")


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("CHARRNN_COMMIT", "unknown")


def section(rows: list[dict], a: argparse.Namespace, corpus: str) -> str:
    """The Markdown of the Cells section: setup, table, commands."""
    rev = os.environ.get("CHARRNN_COMMIT") or commit()
    lines = [
        "## Cells",
        "",
        f"`bench/cells.py`: LSTM, GRU and plain RNN at about {a.params:,} parameters each, 1-3 layers, "
        f"{a.minutes:g} minutes of wall clock per run (the issue suggests 5; the machine is shared, so 2.5), "
        f"on tinyshakespeare. Same for every run: Adam, lr {a.lr:g}, dropout {a.dropout:g}, batch {a.batch_size}, "
        f"window {a.seq_len}, validation every {a.val_every} steps and at the end, seed {a.seed}, clip norm:5 "
        f"and the default learning-rate schedule of the commit, tanh, uniform init. Best validation bits/char is the minimum over the run's validations.",
        "",
        f"Run {datetime.date.today().isoformat()} on commit `{rev}`, {platform.machine()}, "
        f"{os.cpu_count()} cores shared with other work, CPU backend, under `flock /tmp/charrnn-cpu.lock`.",
        "",
        "| cell | layers | hidden | params | best val bits/char | at step | steps | epochs | last train bits/char "
        "| chars/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['layers']} | {r['hidden']} | {r['params']:,} | **{r['best_val_bpc']:.4f}** "
                     f"| {r['best_step']} | {r['steps']} | {r['epochs']:.2f} | {r['train_bpc']:.3f} "
                     f"| {r['chars_per_s']:,.0f} |")
    lines += ["", "Commands (as run; `charrnn` is `python -m charrnn`):", "", "```"]
    lines += [f"flock /tmp/charrnn-cpu.lock python bench/cells.py --minutes {a.minutes:g} --params {a.params} "
              f"--lr {a.lr:g} --dropout {a.dropout:g} --batch-size {a.batch_size} --seq-len {a.seq_len} "
              f"--val-every {a.val_every}" + (f" --lr-floor {a.lr_floor:g}" if a.lr_floor is not None else "")]
    lines += ["# which runs:"] + ["charrnn " + shlex.join(r["args"]) for r in rows] + ["```", ""]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the `## Cells` section of RESULTS.md (up to the next `## ` heading), or append it."""
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n\nOne section per bench script.\n\n"
    pat = re.compile(r"^## Cells\n.*?(?=^## |\Z)", re.S | re.M)
    new = pat.sub(lambda m: text + "\n", old, count=1) if pat.search(old) else old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default=os.path.join(os.environ.get("CHARRNN_CORPORA", str(ROOT.parent / "shared" / "corpora")),
                                                    "tinyshakespeare.txt"))
    p.add_argument("--minutes", type=float, default=2.5)
    p.add_argument("--params", type=int, default=250_000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lr-floor", type=float, default=None, help="the schedule's floor (default: charrnn's)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--seq-len", type=int, default=50)
    p.add_argument("--val-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cells", default=",".join(CELLS))
    p.add_argument("--depths", default=",".join(map(str, DEPTHS)))
    p.add_argument("--runs", default="/tmp/charrnn-bench-cells", help="Where the run directories go.")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    p.add_argument("--table-only", action="store_true",
                   help="Train nothing: rebuild the table from the run directories already in --runs.")
    a = p.parse_args()
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if not a.table_only:
        warm_up(a.corpus, a, runs)
    rows = []
    for cell in a.cells.split(","):
        for layers in map(int, a.depths.split(",")):
            h = hidden_for(cell, layers, a.params)
            out = runs / f"{cell}-{layers}"
            args = train_args(a.corpus, cell, layers, h, a, out)
            if not a.table_only:
                if (out / "metrics.jsonl").exists():
                    (out / "metrics.jsonl").unlink()     # a fresh log: best-of must be this run's
                print(f"{cell} x{layers}: hidden {h}, {n_params(ModelConfig(VOCAB, h, layers, cell)):,} params",
                      flush=True)
                charrnn(args, log=runs / f"{cell}-{layers}.log")
            row = {"cell": cell, "layers": layers, "hidden": h,
                   "params": n_params(ModelConfig(VOCAB, h, layers, cell)), "args": args,
                   **best_val(out / "metrics.jsonl")}
            print(f"  best val {row['best_val_bpc']:.4f} bits/char after {row['steps']} steps", flush=True)
            rows.append(row)
            (runs / "results.json").write_text(json.dumps(rows, indent=1))
    write_section(Path(a.results), section(rows, a, a.corpus))


if __name__ == "__main__":
    main()
