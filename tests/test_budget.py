"""Sizing the model to a time budget (charrnn/budget.py): the rule, and `charrnn train --minutes`
applying it only to a new run given no model flags."""
import json

import pytest
from click.testing import CliRunner

from charrnn import budget, checkpoint as ckpt
from charrnn.cli import cli

PARAMS = {128: 240_000, 256: 870_000, 512: 3_300_000}


def test_the_widest_width_that_reads_the_text_often_enough_is_chosen():
    # ten minutes; a 1M-character text: 256 reads it 10.8 times, 512 only 3
    rates = {128: 65_000, 256: 18_000, 512: 5_000}
    s = budget.choose(rates, PARAMS, 600, 1_000_000, dropout=0.2)
    assert (s.hidden, s.dropout) == (256, 0.2)
    assert s.passes == pytest.approx(10.8)
    assert s.chars_per_param == pytest.approx(18_000 * 600 / 870_000)


def test_a_long_text_gets_the_narrowest_width_and_no_dropout():
    rates = {128: 50_000, 256: 17_000}
    s = budget.choose(rates, PARAMS, 600, 11_000_000, dropout=0.2)
    assert (s.hidden, s.dropout) == (128, 0.0)     # 2.7 passes, 125 chars per parameter


def test_enough_fresh_text_per_parameter_earns_a_wider_model_without_repeats():
    # a day on a huge text: 512 reads it once, but 150 characters per parameter
    rates = {128: 400_000, 256: 130_000, 512: 6_000}
    s = budget.choose(rates, PARAMS, 86_400, 10**9, dropout=0.2)
    assert (s.hidden, s.dropout) == (512, 0.0)


def test_a_short_text_does_not_buy_a_model_the_budget_cannot_train():
    # a 5,000-character text read hundreds of times by every width, but one minute gives 512
    # under one character per parameter and 256 about 1.2
    rates = {128: 65_000, 256: 18_000, 512: 5_000}
    s = budget.choose(rates, PARAMS, 60, 5_000, dropout=0.2)
    assert s.hidden == 128 and s.chars_per_param >= budget.MIN_CHARS_PER_PARAM


def test_dropout_needs_the_text_read_several_times():
    rates = {128: 10_000}
    few = budget.choose(rates, PARAMS, 600, 6_000_000 // 3, dropout=0.3)     # 3 passes
    many = budget.choose(rates, PARAMS, 600, 6_000_000 // 5, dropout=0.3)    # 5 passes
    assert (few.dropout, many.dropout) == (0.0, 0.3)


@pytest.fixture
def small_ladder(monkeypatch):
    monkeypatch.setattr(budget, "LADDER", (8, 16, 24))
    monkeypatch.setattr(budget, "PROBE_S", 0.0)


def _train(tmp_path, *flags):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", str(text), "--out", str(run), "--max-steps", "2", "--seq-len", "8",
                                 "--batch-size", "4", "--no-diag", *flags])
    assert r.exit_code == 0, r.output
    return ckpt.load(run / "last.safetensors"), r.output


def test_a_budgeted_run_without_model_flags_is_sized_on_this_machine(tmp_path, small_ladder):
    ck, out = _train(tmp_path, "--minutes", "5")
    # a 4,800-character text and tiny widths: every width reads it far more than MIN_PASSES times
    assert ck.config.hidden == 24 and ck.config.dropout == 0.2
    assert "sized to the budget" in out and "--hidden 24" in out
    assert json.loads(json.dumps(ck.train_args))["model"]["hidden"] == 24


@pytest.mark.parametrize("flags", [["--hidden", "12"], ["--dropout", "0.1"], ["--layers", "1"], []])
def test_model_flags_or_no_budget_keep_the_defaults(tmp_path, small_ladder, flags):
    budgeted = flags and ["--minutes", "5"]
    ck, out = _train(tmp_path, *flags, *(budgeted or []))
    assert "sized to the budget" not in out
    assert ck.config.hidden == (12 if flags[:1] == ["--hidden"] else 256)


def test_a_machine_is_crowded_only_when_full_and_others_hold_a_share_of_it():
    def at(others_and_ours: float, ours: float) -> tuple[float, float]:
        return others_and_ours, ours
    zero = (0.0, 0.0)
    assert budget.crowded(zero, at(1.9, 1.0), 1.0, cpus=2)           # we got 1 core, others 0.9
    assert not budget.crowded(zero, at(1.95, 1.9), 1.0, cpus=2)      # idle but for a daemon
    assert not budget.crowded(zero, at(32.0, 2.0), 1.0, cpus=64)     # others busy, room to spare
    assert not budget.crowded(zero, at(1.0, 1.0), 1.0, cpus=2)       # one thread, a core idle
    assert not budget.crowded(None, at(9.0, 0.0), 1.0, cpus=2) and not budget.crowded(zero, None, 1.0)


def _measure_with_readings(monkeypatch, crowded_timings: set[int]):
    """budget.measure on tiny widths where timing i (counted from 0) looks crowded iff i is in
    `crowded_timings`; returns the sizing and the number of timings made."""
    from charrnn.config import ModelConfig
    from charrnn.optim import new_optimizer
    from charrnn.options import TrainOptions
    calls = []

    def fake_cpu_now():
        calls.append(None)
        timing, after = divmod(len(calls) - 1, 2)
        return (1e9, 0.0) if after and timing in crowded_timings else (0.0, 0.0)
    monkeypatch.setattr(budget, "cpu_now", fake_cpu_now)
    cfg = ModelConfig(vocab_size=10, hidden=8, dropout=0.2)
    s = budget.measure(cfg, "cpu", 8, 4, 300.0, 4_800, lambda n: new_optimizer(TrainOptions(), n))
    return s, len(calls) // 2


def test_a_width_timed_on_a_crowded_machine_is_timed_again(small_ladder, monkeypatch):
    s, timings = _measure_with_readings(monkeypatch, {0, 2, 4})     # each width's first timing
    assert timings == 6 and s.hidden == 24 and not s.crowded
    assert "other processes" not in s.describe(5)
    s, timings = _measure_with_readings(monkeypatch, set(range(99)))
    assert timings == 3 * (1 + budget.RETIMES) and s.crowded
    assert "other processes held the cores" in s.describe(5)
