"""The training run as a whole: a short `charrnn train` and its resume give the same bits as the
code that recorded the fixtures below, on the CPU and on the CUDA backend under the simulator.
Any refactoring of the trainer, the options, the schedule or the CLI must leave these digests
unchanged; a deliberate numerical change re-records them and says why in its commit."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import checkpoint as ckpt
from charrnn.cli import cli
from charrnn.train import Trainer

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

TINY = ["--hidden", "16", "--layers", "2", "--dropout", "0.2", "--seq-len", "10", "--batch-size", "4",
        "--seed", "3", "--device", "cpu", "--val-every", "5", "--no-diag", "--lr-decay", "0.8",
        "--lr-decay-after", "0", "--lr-plateau", "0.5",
        "--lr", "2e-3", "--lr-floor", "0.1"]   # the defaults when the fixture was recorded

# recorded from the code before the redesign (issue 18), CPU
FIRST_RUN = {
    "sha256": "bdf135dd421f695b220ae357b193cdbf692c0ce5a2b86d14c4cb41f907485946",
    "curve": [  # step, train bits/char, validation bits/char, rate
        [5, 4.10697, 4.0879, 0.0019999545212459465],
        [10, 4.09124, 4.05061, 0.001999769771684956],
        [15, 4.06819, 4.01173, 0.001999442938046554],
        [20, 4.03048, 3.9751, 0.001998974071941562],
    ],
}
RESUMED = {
    "sha256": "5e15b52ae7d7c5ec7c651958af093ace9056dbb9085f577418ec738eabcfacc1",
    "curve": [  # step, train bits/char, validation bits/char, rate
        [5, 4.10697, 4.0879, 0.0019999545212459465],
        [10, 4.09124, 4.05061, 0.001999769771684956],
        [15, 4.06819, 4.01173, 0.001999442938046554],
        [20, 4.03048, 3.9751, 0.001998974071941562],
        [25, 3.99498, 3.94991, 0.0019983632474093716],
        [30, 3.96043, 3.93306, 0.0015980884487250067],
    ],
}

# The same run on the CUDA backend in the simulator (kernels run as Python threads), shrunk to what
# it runs in under a minute of CPU: a smaller model and batch, a few steps, still two layers with
# dropout, a validation after each run and a resume.
SIM_TINY = ["--hidden", "4", "--layers", "2", "--dropout", "0.2", "--seq-len", "5", "--batch-size", "2",
            "--val-frac", "0.02", "--seed", "3", "--device", "cuda", "--val-every", "2", "--no-diag",
            "--lr-decay", "0.8", "--lr-decay-after", "0", "--lr-plateau", "0.5", "--lr", "2e-3", "--lr-floor", "0.1"]
SIM_STEPS = (2, 4, 2)   # the run's steps, the resumed run's, --val-every given again on resuming

# recorded under the CUDA simulator at db41048, before the redesign (issue 18)
SIM_FIRST_RUN = {
    "sha256": "2de70ba872f1f3eecfe8d9a1d1cadf764b1012794c1e3a4ae93d48c0a4f61608",
    "curve": [  # step, train bits/char, validation bits/char, rate
        [2, 4.07827, 4.1093, 0.0019999998448310993],
    ],
}
SIM_RESUMED = {
    "sha256": "0016d7276e0a633d32d7ceb39fa3aadbf1696099397e7233fa12d5233ece94a1",
    "curve": [  # step, train bits/char, validation bits/char, rate
        [2, 4.07827, 4.1093, 0.0019999998448310993],
        [4, 4.08064, 4.10806, 0.001999998603480217],
    ],
}

def _text(path):
    words = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so "]
    r = np.random.default_rng(0)
    path.write_text("".join(words[i] for i in r.integers(0, len(words), 300)), encoding="utf-8")
    return path


def _digest(run) -> str:
    """sha256 over the weights, the optimizer's moments and the carried state of last.safetensors."""
    ck = ckpt.load(run / "last.safetensors")
    h = hashlib.sha256(np.ascontiguousarray(ck.params.flat, dtype="<f4").tobytes())
    for name in sorted(ck.optim_state):
        h.update(name.encode())
        h.update(np.ascontiguousarray(ck.optim_state[name], dtype="<f4").tobytes())
    if ck.state is not None:
        h.update(np.ascontiguousarray(ck.state, dtype="<f4").tobytes())
    return h.hexdigest()


def _curve(run) -> list:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [[r["step"], r["train_bpc"], r["val_bpc"], r["lr"]] for r in recs if "val_bpc" in r]


def _run_and_resume(tmp_path, flags: list, steps: int, resumed_steps: int, val_every: int) -> tuple:
    """A run of `steps`, then its resume to `resumed_steps`: their digests and curves."""
    text = _text(tmp_path / "t.txt")
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", str(text), "--out", str(run), "--max-steps", str(steps), *flags])
    assert r.exit_code == 0, r.output
    first = {"sha256": _digest(run), "curve": _curve(run)}
    # resume: the run's own options, --max-steps and --val-every given again on the command line
    r = CliRunner().invoke(cli, ["train", str(text), "--resume", str(run / "last.safetensors"),
                                 "--max-steps", str(resumed_steps), "--val-every", str(val_every)])
    assert r.exit_code == 0, r.output
    return first, {"sha256": _digest(run), "curve": _curve(run)}


def test_short_run_and_its_resume_reproduce_the_recorded_bits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got_first, got_resumed = _run_and_resume(tmp_path, TINY, 20, 30, 5)
    assert got_first == FIRST_RUN
    assert got_resumed == RESUMED


@pytest.mark.skipif(not SIM, reason="runs under NUMBA_ENABLE_CUDASIM=1, started by the test below")
def test_cuda_short_run_and_its_resume_reproduce_the_recorded_bits_in_the_simulator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Trainer, "sample_chars", 0)     # as recorded: samples take minutes in the simulator
    got_first, got_resumed = _run_and_resume(tmp_path, SIM_TINY, *SIM_STEPS)
    assert got_first == SIM_FIRST_RUN
    assert got_resumed == SIM_RESUMED


@pytest.mark.slow
@pytest.mark.skipif(SIM, reason="this is the launcher of the simulator run")
def test_cuda_backend_reproduces_the_recorded_bits_under_the_simulator():
    # the simulator must be switched on before numba.cuda is first imported: a fresh process
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests" / "offline"), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "-W", "ignore::RuntimeWarning", "-k", "reproduce_the_recorded_bits_in_the_simulator",
                        __file__], capture_output=True, text=True, env=env, cwd=root, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout


def test_the_last_line_names_checkpoints_only_where_they_were_written(tmp_path):
    from charrnn.train import summary_line
    res = {"reason": "reached --max-steps 3", "steps": 0, "epochs": 0.0, "elapsed_s": 1.0, "best_val_bpc": None}
    assert summary_line(res, tmp_path).endswith(f"no checkpoint was written to {tmp_path}")
    (tmp_path / "last.safetensors").write_bytes(b"x")
    assert summary_line(res, tmp_path).endswith(f"checkpoints in {tmp_path}")
