"""SIGKILL a training run at random moments, again and again, and check that nothing written is lost.

Each round resumes from `last` (or starts fresh), trains with a validation and a save every two
steps, and is killed with SIGKILL after a random delay, or (half the rounds) the moment a
temporary checkpoint file appears, i.e. in the middle of writing one. After each kill, `last` and `best` must
both load, and each must be either the version that was there before the round (same bytes) or
a newer one (a later step). Temporary files a kill leaves behind must be swept by the next start.

    flock /tmp/charrnn-cpu.lock python bench/kill_test.py --rounds 25
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from charrnn import checkpoint as ckpt


def words(n: int, seed: int) -> str:
    w = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so ", "quick ", "brown "]
    r = random.Random(seed)
    return "".join(r.choice(w) for _ in range(n))


def version(path: Path) -> tuple[str, int] | None:
    """(sha256, step) of a checkpoint, or None when absent; raises if it does not load."""
    if not path.exists():
        return None
    ck = ckpt.load(path)
    return hashlib.sha256(path.read_bytes()).hexdigest(), int(ck.progress["step"])


def _listing(run: Path) -> list[Path]:
    try:
        return list(run.iterdir())
    except OSError:
        return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--min-delay", type=float, default=0.3, help="seconds after start before the kill, at least")
    ap.add_argument("--max-delay", type=float, default=3.0)
    ap.add_argument("--hidden", type=int, default=128, help="bigger models make slower writes to land in")
    ap.add_argument("--aim", type=float, default=0.5,
                    help="share of rounds killed the moment a temporary checkpoint file appears")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    work = Path(a.dir or tempfile.mkdtemp(prefix="charrnn-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    text = work / "text.txt"
    text.write_text(words(60000, a.seed))
    run = work / "run"
    base = [sys.executable, "-m", "charrnn", "train", str(text), "--out", str(run), "--device", "cpu",
            "--hidden", str(a.hidden), "--layers", "2", "--seq-len", "32", "--batch-size", "16",
            "--val-every", "2", "--max-epochs", "1000", "--val-frac", "0.01", "--test-frac", "0.01"]
    tally = {"kept old": 0, "new": 0, "appeared": 0, "temp files left by a kill": 0, "swept at next start": 0}
    failures = []
    leftovers: set[str] = set()
    print(f"run directory {run}; checkpoint size grows with --hidden {a.hidden}", file=sys.stderr)
    for i in range(1, a.rounds + 1):
        before = {n: version(run / f"{n}.safetensors") for n in ("last", "best")}
        # no `last` yet: start afresh, even where a killed first run left its metrics (moved aside)
        cmd = base + (["--resume", str(run / "last.safetensors")] if before["last"] else ["--overwrite"])
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if before["last"] and rnd.random() < a.aim:   # the worst moment: while this run writes a checkpoint
            end, mine = time.monotonic() + a.max_delay + 30, f".tmp-{p.pid}"
            while time.monotonic() < end and not any(f.name.endswith(mine) for f in _listing(run)):
                time.sleep(0.0005)
        else:
            time.sleep(rnd.uniform(a.min_delay, a.max_delay))
        p.send_signal(signal.SIGKILL)
        p.wait()
        temps = sorted(f.name for f in _listing(run) if f.name.startswith("."))
        swept = leftovers - set(temps)
        tally["swept at next start"] += len(swept)
        leftovers = set(temps)
        tally["temp files left by a kill"] += len(temps)
        line = [f"round {i:2d}"]
        for name in ("last", "best"):
            old = before[name]
            try:
                new = version(run / f"{name}.safetensors")
            except ckpt.CheckpointError as e:
                failures.append(f"round {i}: {name} does not load: {e}")
                line.append(f"{name}: BROKEN")
                continue
            if old is not None and new is None:
                failures.append(f"round {i}: {name} disappeared")
                line.append(f"{name}: GONE")
            elif new is None:
                line.append(f"{name}: none yet")
            elif old is None:
                tally["appeared"] += 1
                line.append(f"{name}: new (step {new[1]})")
            elif new[0] == old[0]:
                tally["kept old"] += 1
                line.append(f"{name}: old (step {old[1]})")
            elif new[1] >= old[1]:
                tally["new"] += 1
                line.append(f"{name}: new (step {old[1]} -> {new[1]})")
            else:
                failures.append(f"round {i}: {name} went back from step {old[1]} to {new[1]}")
                line.append(f"{name}: WENT BACK")
        print("  ".join(line) + (f"  temp files: {', '.join(temps)}" if temps else ""))
    # a last clean start must sweep what the final kill left and train on from `last`
    r = subprocess.run(base + ["--resume", str(run / "last.safetensors"), "--max-steps",
                               str(version(run / "last.safetensors")[1] + 2)], capture_output=True)
    left = sorted(f.name for f in run.iterdir() if f.name.startswith("."))
    if r.returncode != 0 or left:
        failures.append(f"final resume: exit {r.returncode}, temp files {left}: {r.stderr.decode()[-300:]}")
    tally["swept at next start"] += len(leftovers)
    print(f"\n{a.rounds} SIGKILLs: " + ", ".join(f"{k} {v}" for k, v in tally.items()))
    print("FAIL:\n  " + "\n  ".join(failures) if failures else "PASS: every `last` and `best` loaded and was "
          "the old version or a newer one; no temp file outlived the next start")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
