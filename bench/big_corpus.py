"""Train on a corpus far larger than the model needs (1 GB by default) and report the peak RSS.

The text is decoded and encoded in 1 MiB pieces and the codes go to a memory-mapped file in the
run directory (unlinked at once), so memory should stay near the small-file baseline instead of
the ~14 bytes per character the read-it-whole path would need (bytes + str + UTF-32 + indices).

    flock /tmp/charrnn-cpu.lock python bench/big_corpus.py --gb 1
"""
from __future__ import annotations

import argparse
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = """
import resource, subprocess, sys, time
t = time.perf_counter()
p = subprocess.run(sys.argv[1:], capture_output=True)
sys.stderr.buffer.write(p.stderr[-2000:])
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, time.perf_counter() - t)
"""


def peak(args: list[str], cwd: Path) -> tuple[int, float]:
    r = subprocess.run([sys.executable, "-c", PROBE, sys.executable, "-m", "charrnn", *args], cwd=cwd,
                       capture_output=True)
    code, rss, secs = r.stdout.split()
    if int(code) != 0:
        raise SystemExit(f"charrnn failed:\n{r.stderr.decode()}")
    return int(rss), float(secs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dir", default=None, help="where the corpus and runs go (needs ~2x the size free)")
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    work = Path(a.dir or tempfile.mkdtemp(prefix="charrnn-big-"))
    work.mkdir(parents=True, exist_ok=True)
    size = int(a.gb * 1e9)
    w = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so ", "naïve ", "café "]
    r = random.Random(0)
    block = "".join(r.choice(w) for _ in range(400_000)).encode("utf-8")
    big = work / "big.txt"
    if not big.exists() or big.stat().st_size < size:
        with open(big, "wb") as f:
            for _ in range(size // len(block) + 1):
                f.write(block)
    (work / "small.txt").write_bytes(block[:100_000])
    flags = ["--hidden", "64", "--layers", "1", "--seq-len", "64", "--batch-size", "32",
             "--max-steps", str(a.steps), "--val-frac", "0.0001", "--test-frac", "0.0001", "--device", "cpu"]
    small_rss, small_s = peak(["train", "small.txt", *flags, "--out", "run-small"], work)
    big_rss, big_s = peak(["train", "big.txt", *flags, "--out", "run-big"], work)
    n = big.stat().st_size
    print(f"corpus {n / 1e9:.2f} GB (UTF-8, some 2-byte characters), {a.steps} steps, hidden 64")
    print(f"peak RSS, 100 kB text: {small_rss / 2**20:7.0f} MiB  ({small_s:.1f} s)")
    print(f"peak RSS, big text:    {big_rss / 2**20:7.0f} MiB  ({big_s:.1f} s, two streaming passes)")
    print(f"growth {(big_rss - small_rss) / 2**20:.0f} MiB = {(big_rss - small_rss) / n:.3f} bytes per input byte "
          f"(reading it whole took ~14 bytes per character)")
    left = sorted(f.name for f in (work / "run-big").iterdir() if f.name.startswith("."))
    print("no temporary files left" if not left else f"left behind: {left}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
