"""charrnn/average.py and --average ema in the trainer: the decay's ramp, the average against one
computed by hand from the raw weights after each step, the raw weights untouched by averaging,
an exact resume, and `best` holding whichever of the two weights scored better (saying which).

Runs are tiny (a 1x6 LSTM, 2 streams of 8 characters, a handful of steps); where a test needs
one of the two scores to win it scripts the scoring rather than hoping training does.
"""
import numpy as np
import pytest

from charrnn import average
from charrnn import checkpoint as ckpt
from charrnn.model import init_params
from charrnn.options import TrainOptions
from charrnn.train import Trainer

WORDS = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so "]
TEXT = "".join(WORDS[i] for i in np.random.default_rng(0).integers(0, len(WORDS), 150))


def _trainer(out, resume=None, **kw) -> Trainer:
    base = dict(hidden=6, layers=1, batch_size=2, seq_len=8, dropout=0.2, lr=0.05, device="cpu",
                max_epochs=3.0, val_every=3, diag=False, seed=5, out=str(out))
    out.mkdir(parents=True, exist_ok=True)
    t = Trainer(TrainOptions.from_dict({**base, **kw}), TEXT, out, show_progress=False, resume=resume)
    t.sample_chars = 0
    return t


def test_the_decay_ramps_from_the_first_step_and_then_holds():
    assert average.decay_at(0.998, 1) == pytest.approx(2 / 11)
    assert average.decay_at(0.998, 100) == pytest.approx(101 / 110)
    assert average.decay_at(0.998, 4491) == 0.998 and average.decay_at(0.998, 10 ** 9) == 0.998
    assert average.decay_at(0.5, 1) == pytest.approx(2 / 11) and average.decay_at(0.5, 9) == 0.5


def test_the_average_is_the_ema_of_the_weights_after_each_step_computed_by_hand(tmp_path):
    t = _trainer(tmp_path, average="ema", average_decay=0.3, max_steps=7)
    start = t.be.params_host().flat.copy()
    # the run starts from the seed's weights (what the average starts from)
    np.testing.assert_array_equal(start, init_params(t.cfg, np.random.default_rng(5)).flat)
    seen = []
    step = t._train_step

    def recorded(t0):
        fault = step(t0)
        seen.append(t.be.params_host().flat.astype(np.float64))
        return fault
    t._train_step = recorded
    t.run()
    assert len(seen) == 7
    want = start.astype(np.float64)
    for k, w in enumerate(seen, 1):
        d = min(0.3, (1 + k) / (10 + k))
        want = d * want + (1 - d) * w
    got = ckpt.load(tmp_path / "last.safetensors").average
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    assert np.abs(got - seen[-1]).max() > 1e-3            # it is not simply the last weights


def test_averaging_leaves_the_raw_weights_and_their_scores_bit_for_bit_as_without_it(tmp_path):
    runs = {}
    for mode in ("off", "ema"):
        _trainer(tmp_path / mode, average=mode, max_steps=9).run()
        runs[mode] = ckpt.load(tmp_path / mode / "last.safetensors")
    np.testing.assert_array_equal(runs["ema"].params.flat, runs["off"].params.flat)
    assert runs["ema"].metrics["val_bpc"] == runs["off"].metrics["val_bpc"]
    assert runs["off"].average is None and "val_bpc_average" not in runs["off"].metrics
    assert runs["ema"].metrics["val_bpc_average"] > 0


def test_a_resumed_run_ends_on_the_uninterrupted_runs_weights_and_average(tmp_path):
    _trainer(tmp_path / "whole", average="ema", max_steps=10).run()
    _trainer(tmp_path / "cut", average="ema", max_steps=4).run()
    cut = ckpt.load(tmp_path / "cut" / "last.safetensors")
    assert cut.progress["step"] == 4 and cut.average is not None
    _trainer(tmp_path / "cut", resume=cut, average="ema", max_steps=10).run()
    a, b = (ckpt.load(tmp_path / d / "last.safetensors") for d in ("whole", "cut"))
    assert b.progress["step"] == 10
    np.testing.assert_array_equal(b.params.flat, a.params.flat)
    np.testing.assert_array_equal(b.average, a.average)


@pytest.mark.parametrize("winner", ["raw", "average"])
def test_best_keeps_the_weights_that_scored_better_and_says_which(tmp_path, monkeypatch, winner):
    """The average's score is scripted 0.5 below or above the raw weights' own."""
    shift = -0.5 if winner == "average" else 0.5
    scores = []

    def scripted(self, progress=None):
        scores.append(self.validate(progress) + shift)
        return scores[-1]
    monkeypatch.setattr(Trainer, "validate_average", scripted)
    t = _trainer(tmp_path, average="ema", max_steps=3)
    t.run()
    best, last = (ckpt.load(tmp_path / f"{n}.safetensors") for n in ("best", "last"))
    assert best.metrics["weights"] == winner
    assert best.metrics["val_bpc_average"] == round(scores[-1], 5)
    want = last.average if winner == "average" else last.params.flat
    np.testing.assert_array_equal(best.params.flat, want)
    assert best.metrics["val_bpc"] == min(best.metrics["val_bpc_average"], last.metrics["val_bpc"])
    assert best.progress["best_val"] == pytest.approx(min(scores[-1], scores[-1] - shift))


def test_the_average_is_scored_on_its_own_weights_and_the_raw_ones_come_back(tmp_path):
    """What validation reports for the average is what evaluating the average's weights gives."""
    t = _trainer(tmp_path, average="ema", max_steps=6)
    t.run()
    raw = t.be.params_host().flat.copy()
    got = t.validate_average()
    np.testing.assert_array_equal(t.be.params_host().flat, raw)
    t.be.set_params(t.average)
    assert got == t.validate()
    assert ckpt.load(tmp_path / "last.safetensors").metrics["val_bpc_average"] == round(got, 5)
