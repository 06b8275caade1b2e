"""The training run as a whole: a short `charrnn train` and its resume give the same bits as the
code that recorded the fixture below. Any refactoring of the trainer, the options, the schedule or
the CLI must leave these digests unchanged; a deliberate numerical change re-records them and
says why in its commit."""
import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import checkpoint as ckpt
from charrnn.cli import cli

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


def test_short_run_and_its_resume_reproduce_the_recorded_bits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = _text(tmp_path / "t.txt")
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", str(text), "--out", str(run), "--max-steps", "20", *TINY])
    assert r.exit_code == 0, r.output
    got_first = {"sha256": _digest(run), "curve": _curve(run)}
    # resume: the run's own options, --max-steps and --val-every given again on the command line
    r = CliRunner().invoke(cli, ["train", str(text), "--resume", str(run / "last.safetensors"),
                                 "--max-steps", "30", "--val-every", "5"])
    assert r.exit_code == 0, r.output
    got_resumed = {"sha256": _digest(run), "curve": _curve(run)}
    assert got_first == FIRST_RUN
    assert got_resumed == RESUMED
