"""The learning-rate range test: the shape of its curve, where its suggestion falls, that a short
run at the suggestion beats runs 30x above and below it, and the command's outputs."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn.cli import cli
from charrnn.lrfind import lr_find, rate_at, suggest
from charrnn.rundir import prepare_out_dir
from charrnn.train import TrainOptions, Trainer

WORDS = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so ", "quickly ", "under ",
         "big ", "red "]


def words(n: int, seed: int = 0) -> str:
    r = np.random.default_rng(seed)
    return "".join(WORDS[i] for i in r.integers(0, len(WORDS), n))


TEXT = words(4000)


def tiny(**kw) -> TrainOptions:
    base = dict(hidden=32, layers=1, seq_len=16, batch_size=16, dropout=0.0, device="cpu", seed=0)
    return TrainOptions.from_dict({**base, **kw})


@pytest.fixture(scope="module")
def curve():
    return lr_find(tiny(), TEXT, steps=200, start=1e-5, end=10.0)


def test_the_rate_rises_exponentially_from_start_to_end():
    r = [rate_at(i, 5, 1e-4, 1.0) for i in range(5)]
    assert r[0] == pytest.approx(1e-4) and r[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(np.log10(r)), 1.0)


def test_suggest_finds_the_steepest_fall_per_decade_and_the_minimum():
    # a curve that falls fastest at lr = 1e-2 (a logistic in log10(lr)) and bottoms out at 1e-1
    lrs = [rate_at(i, 101, 1e-5, 1.0) for i in range(101)]
    x = np.log10(lrs)
    s = 1 + 3 / (1 + np.exp(4 * (x + 2))) + np.where(x > -1, 5 * (x + 1) ** 2, 0.0)
    steep, at_min = suggest(lrs, list(s))
    assert steep == pytest.approx(1e-2, rel=0.13)          # one grid step is 0.05 decades
    assert at_min == pytest.approx(1e-1, rel=0.13)


def test_a_flat_or_too_short_curve_suggests_nothing():
    lrs = [rate_at(i, 8, 1e-5, 1.0) for i in range(8)]
    assert suggest(lrs, [3.0] * 8) == (None, None)


def test_curve_is_u_shaped_and_the_suggestion_lies_on_its_falling_side(curve):
    s = curve.smoothed
    assert len(curve.lr) == len(curve.loss) == len(s) > 50
    assert all(math.isfinite(v) for v in curve.loss)
    imin = int(np.argmin(s))
    assert 10 < imin < len(s) - 3, "the minimum must be inside the sweep"
    assert s[imin] < 0.5 * s[0], "the loss must fall well below where it started"
    assert s[-1] > 1.5 * s[imin] or curve.stopped, "and rise again at high rates"
    assert curve.stopped.startswith("the smoothed loss passed 4x") or curve.stopped.startswith("the loss or")
    assert curve.lr[0] < curve.suggestion < curve.min_loss_lr
    assert curve.suggestion == min(curve.steepest, curve.min_loss_lr / 10)


def _short_run(tmp_path, lr: float, steps: int = 300) -> float:      # ~3 s each on 2 busy cores
    t = Trainer(tiny(lr=lr, lr_schedule="constant", max_steps=steps, val_every=steps, max_epochs=100, seed=1),
                TEXT, prepare_out_dir(tmp_path), show_progress=False)
    t.sample_chars = 0
    return t.run()["last_val_bpc"]


def test_a_short_run_at_the_suggestion_beats_30x_above_and_below(curve, tmp_path):
    lr = curve.suggestion
    at = _short_run(tmp_path / "at", lr)
    below = _short_run(tmp_path / "below", lr / 30)
    above = _short_run(tmp_path / "above", lr * 30)
    assert at < below and at < above, (below, at, above)


def test_lr_find_command_writes_the_suggestion_to_stderr_and_nothing_to_stdout(tmp_path):
    f = tmp_path / "w.txt"
    f.write_text(words(1500), encoding="utf-8")
    args = ["lr-find", str(f), "--hidden", "16", "--layers", "1", "--batch-size", "8", "--seq-len", "16",
            "--steps", "60", "--start", "1e-4", "--end", "10", "--device", "cpu"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert re.search(r"suggested --lr \S+|no suggestion", res.stderr)
    assert re.search(r"^\s+rate\s+bits/char\s+smoothed$", res.stderr, re.M)
    out = tmp_path / "lr.html"
    res = CliRunner().invoke(cli, args + ["--json", "-o", str(out)])
    data = json.loads(res.stdout)
    assert set(data) >= {"lr", "loss", "smoothed", "steepest", "min_loss_lr", "suggestion", "stopped"}
    assert len(data["lr"]) == len(data["loss"]) and data["lr"][0] == pytest.approx(1e-4)
    html = out.read_text(encoding="utf-8")
    assert 'data-chart="line"' in html and "<script src" not in html and "http" not in html.split("<body>")[1]
    if data["min_loss_lr"] is not None:
        assert 'data-mark="min ' in html


def test_lr_find_refuses_a_backwards_range(tmp_path):
    f = tmp_path / "w.txt"
    f.write_text(words(300), encoding="utf-8")
    res = CliRunner().invoke(cli, ["lr-find", str(f), "--start", "1", "--end", "0.1"])
    assert res.exit_code == 2 and "--start must be below --end" in res.output


def test_lr_find_settles_the_window_as_train_does(tmp_path):
    """A normalised LSTM given neither window flag is tested on train's 100 x 25; options a library
    caller passes count as given (given=None)."""
    from charrnn.lrfind import prepare
    f = tmp_path / "t.txt"
    f.write_text(words(200), encoding="utf-8")
    opts, _ = prepare(str(f), {"seq_len": 16, "batch_size": 8}, given=set())
    assert (opts.model.norm, opts.seq_len, opts.batch_size) == ("layer", 100, 25)
    opts, _ = prepare(str(f), {"seq_len": 16, "batch_size": 8})
    assert (opts.seq_len, opts.batch_size) == (16, 8)
    opts, _ = prepare(str(f), {"seq_len": 16, "norm": "none"}, given={"seq_len"})
    assert (opts.seq_len, opts.batch_size) == (16, 50)
