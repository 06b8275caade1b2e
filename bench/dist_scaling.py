"""Data-parallel training on one machine (issue 16), all figures from one run of this script.

Training chars/s of `charrnn train shakespeare` for three layouts of the same global batch:
1 rank x 2 threads, 2 ranks x 1 thread (mpiexec -n 2, threads chosen by charrnn from the
local rank count), 1 rank x 1 thread. Each run trains 2*S steps with a validation (here only a
checkpoint and a sample: --val-frac 0) every S steps; the rate is taken between the records at
steps S and 2S, so start-up and compilation stay outside it while one checkpoint save and one
300-character sample stay inside, as in real training.

Also: the time of one all-reduce of each config's gradient buffer between 2 ranks (shared
memory), polled as charrnn does, blocking, and polled with 1 ms naps; and the validation choice: a checkpoint's validation split scored whole, and in P
contiguous pieces each from a zero state (what P ranks compute).

    python bench/dist_scaling.py                  # the table, 3 rounds (about 15 minutes on 2 cores)
    python bench/dist_scaling.py --steps 5        # a smoke run
    python bench/dist_scaling.py --configs b,default --allreduce-only
    python bench/dist_scaling.py --pieces RUN     # validation bits/char of RUN's best in 1, 2, 4, 8 pieces
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {"b": ["--hidden", "512", "--layers", "2", "--seq-len", "100", "--batch-size", "64"],
           "default": []}   # the defaults: 2x256 T50 B50 (no --minutes, so no sizing to a budget)
STEPS = {"b": 10, "default": 100}      # measured steps: a few seconds each on 2 cores
LAYOUTS = [("1 rank x 2 threads", 1, "2"), ("2 ranks x 1 thread", 2, None), ("1 rank x 1 thread", 1, "1")]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _mpiexec() -> str:
    found = shutil.which("mpiexec", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if not found:
        sys.exit("mpiexec not found: pip install mpi4py mpich")
    return found


def train_rate(config: str, ranks: int, threads: str | None, steps: int) -> float:
    """Training chars/s between steps `steps` and 2*`steps` of a fresh run."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "charrnn", "train", "shakespeare", *CONFIGS[config],
               "--max-steps", str(2 * steps), "--val-every", str(steps), "--val-frac", "0", "--out", tmp]
        if ranks > 1:
            cmd = [_mpiexec(), "-n", str(ranks), *cmd]
        env = {k: v for k, v in os.environ.items() if k != "CHARRNN_THREADS"}
        if threads:
            env["CHARRNN_THREADS"] = threads
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if r.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
        recs = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        recs = [r for r in recs if "chars" in r]          # the step records, not the diagnostics
        a, b = recs[0], recs[-1]
        return (b["chars"] - a["chars"]) / (b["elapsed_s"] - a["elapsed_s"])


def allreduce_ms(config: str) -> str:
    """Median ms of one all-reduce of `config`'s gradient buffer (float32) between 2 ranks: as
    charrnn polls it, as a blocking MPI_Allreduce, and polled with 1 ms naps."""
    r = subprocess.run([_mpiexec(), "-n", "2", sys.executable, __file__, "--allreduce-worker", config],
                       capture_output=True, text=True, timeout=600)
    if r.returncode:
        sys.exit(r.stderr[-2000:])
    return r.stdout.strip().splitlines()[-1]


def _allreduce_worker(config: str) -> None:
    import numpy as np

    from charrnn import dist
    from charrnn.model import ModelConfig, n_params
    args = dict(zip(CONFIGS[config][::2], CONFIGS[config][1::2]))
    cfg = ModelConfig(vocab_size=65, hidden=int(args.get("--hidden", 128)), layers=int(args.get("--layers", 2)))
    comm = dist.start(60)
    MPI = comm.MPI
    buf = np.ones(n_params(cfg) + 5, np.float32)

    def napping():        # polling with 1 ms naps from the first miss: what charrnn does not do
        req = comm.world.Iallreduce(MPI.IN_PLACE, buf)
        while not req.Test():
            time.sleep(0.001)
    ways = {"charrnn": lambda: comm.allreduce_(buf),
            "blocking": lambda: comm.world.Allreduce(MPI.IN_PLACE, buf), "napping": napping}
    median = {}
    for name, fn in ways.items():
        times = []
        for _ in range(21):
            comm.barrier()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        median[name] = 1000 * sorted(times[1:])[len(times) // 2]
    if comm.is_root:
        print(" ".join(f"{k}={v:.2f}" for k, v in median.items()))


def pieces(run: str) -> None:
    """Validation bits/char of RUN's best checkpoint, whole and in P pieces from zero states."""
    import numpy as np

    from charrnn import catalog, checkpoint as ckpt
    from charrnn.backends import make_backend
    from charrnn.corpus import load_corpus, split
    from charrnn.evaluate import evaluate
    ck = ckpt.load(ckpt.resolve(run))
    path, _ = catalog.resolve("shakespeare")
    codes = load_corpus(str(path), vocab=ck.vocab).codes
    val = split(codes, ck.train_args["val_frac"], ck.train_args["test_frac"])[1]
    be = make_backend("cpu", ck.config, ck.params)
    m = len(val) - 1
    for p in (1, 2, 4, 8):
        nats = n = 0
        for r in range(p):
            lo, hi = r * m // p, (r + 1) * m // p
            a, b = evaluate(be, val[lo:hi + 1])
            nats, n = nats + a, n + b
        print(f"{p} piece(s): {nats / n / np.log(2):.5f} bits/char over {n} characters")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=0,
                    help=f"measured steps (after as many warm-up steps) [{STEPS}]")
    ap.add_argument("--configs", default="b,default")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of the three layouts, the order rotated each round; the ratios are "
                         "taken within a round, so slow drift of a shared machine cancels")
    ap.add_argument("--pieces", metavar="RUN")
    ap.add_argument("--allreduce-only", action="store_true", help="only the all-reduce timings")
    ap.add_argument("--allreduce-worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.allreduce_worker:
        return _allreduce_worker(a.allreduce_worker)
    if a.pieces:
        return pieces(a.pieces)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  {_cpu()}  python {platform.python_version()}")
    print(f"command: python bench/dist_scaling.py{f' --steps {a.steps}' if a.steps else ''} --configs {a.configs}"
          f" --rounds {a.rounds}{' --allreduce-only' if a.allreduce_only else ''}")
    print(f"load average before: {os.getloadavg()[0]:.1f} (the machine may be shared)\n")
    if not a.allreduce_only:
        print("| config | layout | chars/s, median (min-max) | vs 1 rank x 1 thread, median of the rounds' "
              "ratios (min-max) |\n|---|---|---|---|")
    for config in a.configs.split(",") if not a.allreduce_only else ():
        rounds = []
        for r in range(a.rounds):
            order = LAYOUTS[r % 3:] + LAYOUTS[:r % 3]
            rates = {name: train_rate(config, ranks, threads, a.steps or STEPS[config])
                     for name, ranks, threads in order}
            rounds.append(rates)
            print(f"  round {r + 1}: " + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()), file=sys.stderr)
        for name, _, _ in LAYOUTS:
            got = sorted(x[name] for x in rounds)
            ratio = sorted(x[name] / x["1 rank x 1 thread"] for x in rounds)
            print(f"| {config} | {name} | {statistics.median(got):,.0f} ({got[0]:,.0f}-{got[-1]:,.0f}) | "
                  f"{statistics.median(ratio):.2f}x ({ratio[0]:.2f}-{ratio[-1]:.2f}) |", flush=True)
    for config in a.configs.split(","):
        print(f"\nall-reduce of config {config}'s gradient (2 ranks, shared memory), median ms: "
              f"{allreduce_ms(config)}")


if __name__ == "__main__":
    main()
