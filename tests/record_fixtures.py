"""Record the training fixtures of tests/test_train.py for the machine this runs on.

    python tests/record_fixtures.py               # the CPU run (about 20 s)
    python tests/record_fixtures.py --cuda-sim    # also the CUDA backend under the simulator (minutes)

Each run is stored under this machine's numerics signature (charrnn/machine.py) as
tests/fixtures/train/<kind>--<signature id>.json: the digest, curve and final weights of a short
run and of its resume. On a machine with its own fixture tests/test_train.py holds the run to it bit
for bit; on any other it compares with the nearest fixture within a float32 tolerance. Record a
fixture when you bring a new kind of machine (another vector width, BLAS kernel family, core
count, NumPy or Numba release), and commit it; an existing fixture is only replaced with
--force, after a deliberate change to the numerics (say why in the commit).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import train_fixture as tf  # noqa: E402


def record(kind: str, force: bool, note: str = "") -> Path:
    from charrnn import machine

    if kind == "cuda-sim":
        from charrnn.train import Trainer
        Trainer.sample_chars = 0        # as the test runs it: samples take minutes in the simulator
    flags, steps = (tf.TINY, tf.CPU_STEPS) if kind == "cpu" else (tf.SIM_TINY, tf.SIM_STEPS)
    sig = tf.machine_signature(kind)
    path = tf.fixture_path(kind, sig)
    if path.exists() and not force:
        raise SystemExit(f"{path.relative_to(HERE.parent)} exists; --force replaces it")
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            first, resumed = tf.run_and_resume(Path(tmp), flags, *steps)
        finally:
            os.chdir(old)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE.parent).stdout.strip()
    rec = {"kind": kind, "machine": machine.describe() + (f"; {note}" if note else ""), "signature": sig,
           "recorded": f"{datetime.date.today().isoformat()} at {commit or 'an unknown commit'}",
           "first": first.record(), "resumed": resumed.record()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=1) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda-sim", action="store_true", help="also record the run under the CUDA simulator")
    ap.add_argument("--only-cuda-sim", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--force", action="store_true", help="replace this signature's existing fixture")
    ap.add_argument("--note", default="", help="how the machine was set up, if not as it came (e.g. an "
                    "emulated vector width: bench/fixture_spread.py)")
    a = ap.parse_args()
    os.environ.setdefault("CHARRNN_CACHE", tempfile.mkdtemp())
    if a.only_cuda_sim:          # the child below: the simulator must be on before numba.cuda loads
        print(record("cuda-sim", a.force, a.note).relative_to(HERE.parent))
        return
    print(record("cpu", a.force, a.note).relative_to(HERE.parent))
    if a.cuda_sim:
        env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
        args = [sys.executable, __file__, "--only-cuda-sim", "--note", a.note] + (["--force"] if a.force else [])
        subprocess.run(args, env=env, check=True)


if __name__ == "__main__":
    main()
