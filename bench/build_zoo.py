"""Rebuild the shipped model, corpora/shakespeare.safetensors, the way it was built (issue 15).

Runs the project's own command line, nothing else:

    charrnn train shakespeare --minutes 10 --seed 1          # default flags: a 2x256 LSTM
    charrnn export RUN --weights-only --half -o HALF        # float16 weights: the wheel stays under 3 MB
    charrnn eval RUN --split val --json                      # and --split test; and the same of HALF
    charrnn export RUN --weights-only --half -o corpora/shakespeare.safetensors --meta ...
    charrnn sample corpora/shakespeare.safetensors --temp 0.8 --seed 1 --length 300

then writes the figures and that sample into the marked block of corpora/README.md.

    python bench/build_zoo.py                       # the real build: 10 minutes of training
    python bench/build_zoo.py --max-steps 200       # a quick temporary model while developing

The procedure is reproducible; the weights are so only on the same machine and load, since
`--minutes` stops training by the clock. Run it alone: other work on the cores means fewer steps.
A build with --max-steps or other minutes is stamped "temporary" in its metadata and README block.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from charrnn import checkpoint as ckpt

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "corpora" / "shakespeare.safetensors"
README = ROOT / "corpora" / "README.md"
BEGIN, END = "<!-- zoo:begin (bench/build_zoo.py writes this block) -->", "<!-- zoo:end -->"


def charrnn(*args: str, cwd: Path | None = None) -> str:
    """Run `charrnn ARGS` with this interpreter; stderr passes through, stdout is returned."""
    cmd = [sys.executable, "-m", "charrnn", *args]
    print("$ charrnn " + " ".join(args), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=cwd).stdout


def commit() -> str:
    """The source commit, with -dirty when tracked files differ from it (the model itself excepted)."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    head = git("rev-parse", "HEAD") or "unknown"
    changed = [ln for ln in git("status", "--porcelain", "--untracked-files=no").splitlines()
               if not ln.endswith((OUT.name, README.name))]
    return head + ("-dirty" if changed else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def readme_block(meta: dict, size: int, sample: str) -> str:
    temp = " **(temporary: not the 10-minute build)**" if meta.get("temporary") else ""
    quoted = "\n".join("    " + ln if ln else "" for ln in sample.splitlines())
    return f"""{BEGIN}
| | |
|---|---|
| file | `shakespeare.safetensors`, {size:,} bytes, weights only, float16{temp} |
| model | {meta['model']} |
| trained with | `{meta['command']}` |
| date, commit | {meta['date']}, `{meta['commit']}` |
| machine | {meta['machine']}; load average {meta['load_average']} (before and after training) |
| training | {meta['steps']} steps, {meta['epochs']} epochs (the best validation) |
| validation | **{meta['val_bpc']:.4f}** bits/char (the float32 weights before export: {meta['val_bpc_float32']:.4f}) |
| test | **{meta['test_bpc']:.4f}** bits/char (float32: {meta['test_bpc_float32']:.4f}) |

`charrnn sample shakespeare --temp 0.8 --seed 1 --length 300`:

{quoted}
{END}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (a quick, temporary build)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", type=Path, default=None, help="train into this run directory and keep it")
    args = ap.parse_args()

    train = ["train", "shakespeare", "--minutes", f"{args.minutes:g}", "--seed", "1"]
    if args.max_steps:
        train += ["--max-steps", str(args.max_steps)]
    temporary = bool(args.max_steps) or args.minutes != 10.0
    with tempfile.TemporaryDirectory(prefix="charrnn-zoo-") as tmp:
        run = args.keep or Path(tmp) / "run"
        load_before = os.getloadavg()[0]           # other work on the cores means fewer steps: record it
        charrnn(*train, "--out", str(run))
        load = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
        # the shipped weights are float16 (the wheel stays under 3 MB): its figures are the half file's,
        # the float32 run's are kept beside them
        half = Path(tmp) / "half.safetensors"
        charrnn("export", str(run), "--weights-only", "--half", "-o", str(half))
        val32, test32 = (json.loads(charrnn("eval", str(run), "--split", s, "--json")) for s in ("val", "test"))
        val, test = (json.loads(charrnn("eval", str(half), "--split", s, "--json")) for s in ("val", "test"))
        progress = ckpt.load(run / "best.safetensors").progress
        records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        meta = {
            "command": "charrnn " + " ".join(train),
            "commit": commit(),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores",
            "load_average": load,
            "steps": progress.get("step"),
            "epochs": next((r["epoch"] for r in records if r.get("step") == progress.get("step")), None),
            "val_bpc": round(val["bits_per_char"], 4),
            "test_bpc": round(test["bits_per_char"], 4),
            "val_bpc_float32": round(val32["bits_per_char"], 4),
            "test_bpc_float32": round(test32["bits_per_char"], 4),
        }
        if temporary:
            meta["temporary"] = True
        pairs = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in meta.items()]
        charrnn("export", str(run), "--weights-only", "--half", "-o", str(args.out),
                *[a for p in pairs for a in ("--meta", p)])
    shipped = ckpt.load(args.out)
    c = shipped.config
    meta["model"] = f"{c.layers}x{c.hidden} {c.cell.upper()}, {shipped.params.flat.size:,} weights, {len(shipped.vocab.chars)} characters"
    meta["date"] = shipped.provenance["date"]
    sample = charrnn("sample", str(args.out), "--temp", "0.8", "--seed", "1", "--length", "300")
    if args.out == OUT:
        text = README.read_text(encoding="utf-8")
        block = readme_block(meta, args.out.stat().st_size, sample)
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
        README.write_text(text, encoding="utf-8")
    print(json.dumps(meta, indent=2))
    print(sample)


if __name__ == "__main__":
    main()
