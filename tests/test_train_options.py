"""The `train` knobs of issue 3 end to end: each flag lands in the checkpoint (so `sample` and
`eval` need none), the learning-rate schedules and early stopping behave as documented, init
and forget bias take effect, and dropout is on only in training, reproducibly under a seed.

Runs are tiny (a few hundred characters, hidden 4-8, a handful of steps). Where a test needs
validation to go a certain way it scripts `Trainer.validate` rather than hoping training does.
"""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import checkpoint as ckpt
from charrnn import reference as ref
from charrnn.dropout import masks as dropout_masks
from charrnn.backends.cpu import CpuBackend
from charrnn.cli import cli
from charrnn.model import ModelConfig, init_params, param_shapes
from charrnn.options import NORM_DEFAULT, TRAIN_OPTION_NAMES
from charrnn.rundir import prepare_out_dir
from charrnn.train import Trainer, TrainOptions
from tiny_models import tiny_config

WORDS = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so "]


def _text(n_words: int = 150) -> str:
    r = np.random.default_rng(0)
    return "".join(WORDS[i] for i in r.integers(0, len(WORDS), n_words))


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "words.txt"
    p.write_text(_text(), encoding="utf-8")
    return p


def _opts(tmp_path, **kw) -> TrainOptions:
    base = dict(hidden=6, layers=1, batch_size=2, seq_len=8, lr_schedule="constant", device="cpu",
                out=str(tmp_path), average="off")      # one validation figure a step: the scripted one
    return TrainOptions.from_dict({**base, **kw})


def _trainer(tmp_path, **kw) -> Trainer:
    return Trainer(_opts(tmp_path, **kw), _text(), tmp_path, show_progress=False)


def _metrics(out) -> list[dict]:
    """The validation records and events (not the diagnostics lines between validations)."""
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "val_bpc" in r or "event" in r]


def _scripted(monkeypatch, values):
    """Make validation return `values` in turn: the schedule's logic, not training's luck, is tested."""
    it = iter(values)
    monkeypatch.setattr(Trainer, "validate", lambda self, **kw: next(it))


def _cli_train(text_file, out, *flags):
    res = CliRunner().invoke(cli, ["train", str(text_file), "--hidden", "6", "--layers", "1", "--batch-size", "2",
                                   "--seq-len", "8", "--device", "cpu", "--out", str(out), *flags])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


# ---------------------------------------------------------------- flags travel in the checkpoint
ALL_FLAGS = ["--cell", "gru", "--layers", "2", "--hidden", "5", "--embed", "3", "--dropout", "0.2",
             "--activation", "softsign", "--init", "xavier", "--forget-bias", "2.5", "--optimizer", "rmsprop",
             "--alpha", "0.9", "--eps", "1e-6", "--weight-decay", "1e-4", "--l1", "1e-5", "--clip", "value:2",
             "--lr", "0.01", "--lr-decay", "0.9", "--lr-decay-after", "1", "--lr-plateau", "0.5",
             "--patience", "7", "--seed", "3", "--val-every", "2", "--max-steps", "4"]


def test_every_train_flag_is_recorded_in_the_checkpoint(tmp_path, text_file):
    _cli_train(text_file, tmp_path / "run", *ALL_FLAGS)
    ck = ckpt.load(tmp_path / "run" / "best.safetensors")
    c = ck.config
    assert (c.cell, c.layers, c.hidden, c.embed, c.dropout, c.activation, c.init, c.forget_bias) == \
        ("gru", 2, 5, 3, 0.2, "softsign", "xavier", 2.5)
    a = ck.train_args
    assert (a["optimizer"], a["alpha"], a["eps"], a["weight_decay"], a["l1"], a["clip"]) == \
        ("rmsprop", 0.9, 1e-6, 1e-4, 1e-5, "value:2")
    assert (a["lr"], a["lr_decay"], a["lr_decay_after"], a["lr_plateau"], a["patience"], a["seed"]) == \
        (0.01, 0.9, 1, 0.5, 7, 3)
    assert ck.optimizer["name"] == "rmsprop" and ck.optimizer["hyper"] == {"alpha": 0.9, "eps": 1e-6}
    assert (ck.optimizer["weight_decay"], ck.optimizer["l1"]) == (1e-4, 1e-5)


def test_a_new_rnn_run_records_its_cells_rate_and_a_given_rate_is_kept(tmp_path, text_file):
    res = _cli_train(text_file, tmp_path / "rnn", "--cell", "rnn", "--max-steps", "2")
    assert "--lr 0.003: the default rate of adam for the rnn cell" in res.stderr
    assert ckpt.load(tmp_path / "rnn" / "last.safetensors").train_args["lr"] == 3e-3
    _cli_train(text_file, tmp_path / "given", "--cell", "rnn", "--lr", "0.02", "--max-steps", "2")
    assert ckpt.load(tmp_path / "given" / "last.safetensors").train_args["lr"] == 0.02


def test_a_new_lstm_run_is_layer_normalised_unless_told_a_gru_is_not_and_a_resumed_run_keeps_its_own(
        tmp_path, text_file):
    """--norm auto (the default): a layer-normalised LSTM, a plain GRU; --norm none a plain LSTM, which
    a resume without --norm keeps (the run's own, not the default's)."""
    from charrnn.model import param_shapes

    def config(run):
        return ckpt.load(tmp_path / run / "last.safetensors").config
    _cli_train(text_file, tmp_path / "ln", "--max-steps", "2")
    assert config("ln").norm == "layer" and "l0.ln_g" in dict(param_shapes(config("ln")))
    _cli_train(text_file, tmp_path / "gru", "--cell", "gru", "--max-steps", "2")
    assert config("gru").norm == "none"
    _cli_train(text_file, tmp_path / "plain", "--norm", "none", "--max-steps", "2")
    _cli_train(text_file, tmp_path / "plain", "--resume", str(tmp_path / "plain" / "last.safetensors"),
               "--max-steps", "4")
    assert config("plain").norm == "none" and "l0.ln_g" not in dict(param_shapes(config("plain")))


def test_a_new_layer_normalised_run_records_the_longer_window_unless_a_flag_or_the_model_says_otherwise(
        tmp_path):
    """The window `charrnn train` settles lands in train_args: 100 x 25 for a new normalised LSTM
    given neither flag, a given flag kept beside the other's default, 50 x 50 for a plain one."""
    f = tmp_path / "long.txt"
    f.write_text(_text(1500), encoding="utf-8")      # about 6,000 characters: room for 25 streams of 100

    def window(run, *flags):
        res = CliRunner().invoke(cli, ["train", str(f), "--hidden", "6", "--layers", "1", "--max-steps", "1",
                                       "--device", "cpu", "--out", str(tmp_path / run), *flags])
        assert res.exit_code == 0, res.output + repr(res.exception)
        a = ckpt.load(tmp_path / run / "last.safetensors").train_args
        return a["seq_len"], a["batch_size"]

    assert window("ln") == (100, 25)
    assert window("given", "--seq-len", "40") == (40, 25)
    assert window("plain", "--norm", "none") == (50, 50)


@pytest.mark.parametrize("flags,hyper", [
    (["--optimizer", "adam", "--beta1", "0.8", "--beta2", "0.99", "--eps", "1e-7"],
     {"beta1": 0.8, "beta2": 0.99, "eps": 1e-7}),
    (["--optimizer", "nesterov", "--momentum", "0.5"], {"momentum": 0.5}),
    (["--optimizer", "adagrad", "--eps", "1e-4"], {"eps": 1e-4}),
])
def test_each_optimizer_records_its_hyperparameters(tmp_path, text_file, flags, hyper):
    _cli_train(text_file, tmp_path / "run", *flags, "--max-steps", "2")
    assert ckpt.load(tmp_path / "run" / "last.safetensors").optimizer["hyper"] == hyper


def test_sample_and_eval_rebuild_the_model_from_the_checkpoint_alone(tmp_path, text_file):
    _cli_train(text_file, tmp_path / "run", *ALL_FLAGS)
    r = CliRunner()
    s = r.invoke(cli, ["sample", str(tmp_path / "run"), "--length", "40", "--seed", "1", "--device", "cpu"])
    assert s.exit_code == 0, s.output
    assert len(s.stdout.rstrip("\n")) >= 40
    e = r.invoke(cli, ["eval", str(tmp_path / "run"), "--json", "--device", "cpu"])
    assert e.exit_code == 0, e.output
    assert math.isfinite(json.loads(e.stdout)["bits_per_char"])


# ---------------------------------------------------------------- learning-rate schedules
def test_lr_decay_multiplies_once_per_epoch_from_decay_after(tmp_path):
    t = _trainer(tmp_path, lr=0.1, lr_decay=0.5, lr_decay_after=2, max_epochs=4)
    t.run()
    # validation once per epoch; each record carries the rate its epoch ran at
    assert [r["lr"] for r in _metrics(tmp_path) if "val_bpc" in r] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert t.lr == pytest.approx(0.025)


def test_lr_plateau_multiplies_on_each_non_improving_validation(tmp_path, monkeypatch):
    _scripted(monkeypatch, [3.0, 2.5, 2.6, 2.7, 2.4, 2.45])
    t = _trainer(tmp_path, lr=0.1, lr_plateau=0.5, val_every=1, max_steps=6)
    t.run()
    # a record's rate is the one its step used; the cut applies from the next step
    assert [r["lr"] for r in _metrics(tmp_path) if "val_bpc" in r] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.025, 0.025])
    assert t.lr == pytest.approx(0.0125)


def test_the_schedule_position_is_written_down_and_restored_on_resume(tmp_path, monkeypatch):
    _scripted(monkeypatch, [3.0, 2.5, 2.6])
    t = _trainer(tmp_path, lr=0.1, lr_plateau=0.5, val_every=1, max_steps=3)
    t.run()
    last = ckpt.load(tmp_path / "last.safetensors")
    assert last.progress["lr"] == pytest.approx(0.05)
    assert (last.progress["bad_evals"], last.progress["best_val"], last.progress["step"]) == (1, 2.5, 3)
    again = Trainer(_opts(tmp_path, lr=0.1, lr_plateau=0.5), _text(), tmp_path, show_progress=False, resume=last)
    pr = again.progress
    assert (again.lr, pr.bad_evals, pr.best_val, pr.step) == (pytest.approx(0.05), 1, 2.5, 3)


def test_a_rate_given_again_on_resume_replaces_the_runs_decayed_rate(tmp_path, text_file):
    """--resume takes the run's own rate (decays and halvings so far) unless --lr is given
    again on the command line: then that rate, as for every other option given again."""
    import shutil
    run = tmp_path / "run"
    _cli_train(text_file, run, "--lr", "0.01", "--lr-schedule", "constant", "--lr-decay", "0.5",
               "--lr-decay-after", "0", "--max-steps", "40", "--val-every", "10", "--no-diag")
    decayed = ckpt.load(run / "last.safetensors").progress["lr"]
    assert decayed < 0.01                                # an epoch ended: the run's rate moved
    shutil.copytree(run, tmp_path / "again")
    for out, flags, want in ((run, [], decayed), (tmp_path / "again", ["--lr", "0.02"], 0.02)):
        res = CliRunner().invoke(cli, ["train", str(text_file), "--resume", str(out / "last.safetensors"),
                                       "--max-steps", "45", *flags])
        assert res.exit_code == 0, res.output
        assert ckpt.load(out / "last.safetensors").progress["lr"] == pytest.approx(want)
        assert _metrics(out)[-2]["lr"] == pytest.approx(want)      # the last record before the stop event


# ---------------------------------------------------------------- time budgets
class _Clock:
    """Stands in for train.time: every reading is one second after the last, so a budget ends
    after a known-ish number of steps whatever the machine's speed (no timing assertions)."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def ticking(monkeypatch):
    """A fake clock, and a default epoch cap of one epoch (about 30 steps of _text())."""
    import charrnn.options as options
    import charrnn.train as train
    monkeypatch.setattr(train, "time", _Clock())
    monkeypatch.setattr(options, "DEFAULT_MAX_EPOCHS", 1.0)
    return options


def test_epoch_limit_is_the_given_one_else_none_under_a_budget_else_the_default(ticking):
    assert TrainOptions().epoch_limit() == ticking.DEFAULT_MAX_EPOCHS
    assert TrainOptions(minutes=10).epoch_limit() == math.inf
    assert TrainOptions(minutes=10, max_epochs=3).epoch_limit() == 3


def test_a_budget_is_spent_whole_and_the_cosine_spans_it_when_max_epochs_is_not_given(tmp_path, ticking):
    t = _trainer(tmp_path, minutes=2.0, lr=0.1, lr_schedule="cosine", lr_floor=0.1)
    res = t.run()
    assert res["reason"] == "time budget of 2 minutes reached"
    assert res["epochs"] > 1.5                             # ran on past the default cap of one epoch
    lrs = [r["lr"] for r in _metrics(tmp_path) if "val_bpc" in r]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < 0.1   # annealed by the clock, not by the epochs
    assert t.lr_now == pytest.approx(0.01, rel=0.05)      # the last step ran at the floor


def test_an_explicit_max_epochs_still_ends_a_budgeted_run_first(tmp_path, ticking):
    t = _trainer(tmp_path, minutes=2.0, max_epochs=1.0, lr=0.1, lr_schedule="cosine", lr_floor=0.1)
    res = t.run()
    assert res["reason"] == "finished the epochs" and res["epochs"] == 1.0
    assert t.lr_now == pytest.approx(0.01, rel=0.05)      # the schedule spanned the epochs: they ended first


def test_without_a_budget_the_default_epoch_cap_ends_the_run(tmp_path, ticking):
    res = _trainer(tmp_path).run()
    assert res["reason"] == "finished the epochs" and res["epochs"] == 1.0


# ---------------------------------------------------------------- early stopping
def test_patience_stops_logs_why_and_keeps_best_as_the_checkpoint_of_record(tmp_path, text_file, monkeypatch):
    _scripted(monkeypatch, [3.0, 2.5, 2.6, 2.7, 2.8, 2.9])
    out = tmp_path / "run"
    res = _cli_train(text_file, out, "--patience", "2", "--val-every", "1", "--max-steps", "6", "--average", "off")
    recs = _metrics(out)
    assert [r.get("val_bpc") for r in recs[:-1]] == [3.0, 2.5, 2.6, 2.7]
    assert recs[-1]["event"] == "stop" and recs[-1]["step"] == 4 and "2 validations" in recs[-1]["reason"]
    assert "early stop" in res.stderr
    best = ckpt.load(ckpt.resolve(str(out)))              # what sample/eval pick up from the run directory
    assert best.progress["step"] == 2 and best.metrics["val_bpc"] == 2.5
    assert ckpt.load(out / "last.safetensors").progress["step"] == 4


def test_without_patience_training_runs_through_bad_validations(tmp_path, monkeypatch):
    _scripted(monkeypatch, [3.0, 3.1, 3.2, 3.3])
    assert _trainer(tmp_path, val_every=1, max_steps=4).run()["steps"] == 4


# ---------------------------------------------------------------- init and forget bias
def _weights(t: Trainer):
    p = t.be.params_host()
    return p, [p[n] for n, s in param_shapes(t.cfg) if len(s) == 2]


def test_uniform_init_is_char_rnn_range(tmp_path):
    _, ws = _weights(_trainer(tmp_path, hidden=16, init="uniform"))
    top = max(np.abs(w).max() for w in ws)
    assert 0.07 < top <= 0.08


def test_xavier_init_scales_each_gate_block_by_its_fans(tmp_path):
    t = _trainer(tmp_path, hidden=16, init="xavier")
    p, _ = _weights(t)
    bound = math.sqrt(6.0 / (16 + 16))                     # l0.Wh: fan-in H, fan-out one gate block H
    assert 0.8 * bound < np.abs(p["l0.Wh"]).max() <= bound
    out_bound = math.sqrt(6.0 / (16 + t.cfg.vocab_size))
    assert np.abs(p["out.W"]).max() <= out_bound


@pytest.mark.parametrize("fb", [1.0, 5.0, 0.0])
def test_forget_bias_sets_only_the_lstm_forget_gate(tmp_path, fb):
    p, _ = _weights(_trainer(tmp_path, hidden=4, layers=2, forget_bias=fb))
    for l in range(2):
        b = p[f"l{l}.b"]                                   # gate order i, f, g, o
        assert np.all(b[4:8] == fb) and not np.any(b[:4]) and not np.any(b[8:])


# ---------------------------------------------------------------- dropout
def _host_params(cfg, seed=0):
    p = init_params(cfg, np.random.default_rng(seed), dtype=np.float64)
    p.flat[:] = np.random.default_rng(seed + 1).normal(0, 0.3, p.flat.size)
    return p


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_dropout_is_off_in_eval_and_sampling_steps(cell):
    on = tiny_config(vocab_size=7, hidden=5, layers=2, cell=cell, dropout=0.5)
    off = tiny_config(vocab_size=7, hidden=5, layers=2, cell=cell, dropout=0.0)
    p = _host_params(on)
    r = np.random.default_rng(2)
    x, y = r.integers(0, 7, (6, 3)), r.integers(0, 7, (6, 3))
    s0 = np.zeros((2, on.n_states, 3, 5))
    a, b = CpuBackend(on, p.astype(np.float64)), CpuBackend(off, p.astype(np.float64))
    assert a.loss(x, y, s0)[0] == b.loss(x, y, s0)[0]                    # evaluation
    assert np.array_equal(a.step(x[0], s0)[0], b.step(x[0], s0)[0])      # sampling
    assert a.train_step(x, y, s0, 11)[0] != b.train_step(x, y, s0, 11)[0]  # and on in training


def test_dropout_training_is_reproducible_under_a_seed(tmp_path):
    runs = iter(range(100))

    def final(seed, dropout=0.3):
        d = tmp_path / str(next(runs))
        d.mkdir()
        t = Trainer(_opts(d, dropout=dropout, seed=seed, max_steps=5, val_every=100), _text(), d,
                    show_progress=False)
        t.run()
        return t.be.params_host().flat.copy()
    assert np.array_equal(final(5), final(5))
    assert not np.array_equal(final(5), final(6))
    assert not np.array_equal(final(5), final(5, dropout=0.0))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("activation", ["tanh", "softsign"])
@pytest.mark.parametrize("L,B", [(1, 1), (1, 3), (2, 1), (2, 3)])
def test_cpu_backend_matches_reference_with_a_fixed_dropout_mask(cell, activation, L, B):
    # test_cpu_backend.py covers every cell x activation without dropout and dropout at L=2, B=3 with tanh
    cfg = tiny_config(vocab_size=6, hidden=5, layers=L, cell=cell, activation=activation, dropout=0.3)
    T, seed = 5, 9
    p = _host_params(cfg)
    r = np.random.default_rng(4)
    x, y = r.integers(0, 6, (T, B)), r.integers(0, 6, (T, B))
    state = r.normal(0, 0.5, (L, cfg.n_states, B, 5))
    masks = dropout_masks(seed, (L, T, B, 5), cfg.dropout, np.float64)
    loss, cache, s_ref = ref.forward(p, cfg, x, y, state, masks)
    g = p.like()
    ref.backward(p, g, cfg, cache, 1.0 / (T * B))
    be = CpuBackend(cfg, p.astype(np.float64))
    got, s_got = be.train_step(x, y, state, dropout_seed=seed)
    assert got == pytest.approx(loss, rel=1e-9)
    np.testing.assert_allclose(s_got, s_ref, rtol=1e-9, atol=1e-12)
    for name, _ in param_shapes(cfg):
        np.testing.assert_allclose(be.grad[name], g[name], rtol=1e-7, atol=1e-11, err_msg=name)


def test_train_options_nest_the_model_config_and_the_cli_takes_their_defaults():
    from charrnn.cli import cli
    # one set of defaults: fresh options hold ModelConfig's default model
    assert TrainOptions().model == ModelConfig()
    assert TrainOptions().model_config(7) == ModelConfig(vocab_size=7)
    params = {p.name: p.default for p in cli.commands["train"].params}
    defaults = {**TrainOptions().model.to_dict(), **TrainOptions().to_dict()}
    for name in TRAIN_OPTION_NAMES:
        if name not in ("device", "out", "max_epochs", "norm"):   # auto, a directory from the text, a budget-aware
            assert params[name] == defaults[name], name           # None, and auto (by cell and device)
    assert params["norm"] == NORM_DEFAULT == "auto"
    assert not set(params) - TRAIN_OPTION_NAMES - {"text", "name", "encoding", "byte_mode", "resume",
                                                   "init_from", "overwrite", "dist_mode", "dist_timeout",
                                                   "globs", "exclude", "strict"}    # how the documents are found


def test_options_read_back_nested_as_saved_or_flat_as_given_on_the_command_line():
    opts = TrainOptions.from_dict({"hidden": 12, "cell": "gru", "lr": 3e-3, "max_epochs": 2})
    assert (opts.model.hidden, opts.model.cell, opts.lr, opts.max_epochs) == (12, "gru", 3e-3, 2)
    assert opts.model.layers == ModelConfig().layers and opts.seq_len == TrainOptions().seq_len
    assert TrainOptions.from_dict(opts.to_dict()) == opts
    # a flat name given again (a resume's command line) wins over the saved nested record
    again = TrainOptions.from_dict({**opts.to_dict(), "dropout": 0.0})
    assert again.model.dropout == 0.0 and again.model.hidden == 12
    assert TrainOptions.from_dict({"lr": 1}).lr == 1.0 and isinstance(TrainOptions.from_dict({"lr": 1}).lr, float)


@pytest.mark.parametrize("bad", [{"hiden": 8}, {"hidden": "8"}, {"lr": "fast"}, {"model": [1]},
                                 {"model": {"cell": "lstmm"}}, {"optimizer": "adamx"}, {"seq_len": 0},
                                 {"diag": 1}, {"val_frac": 1.0}])
def test_options_with_an_unknown_name_or_a_bad_value_are_refused(bad):
    with pytest.raises(ValueError):
        TrainOptions.from_dict(bad)


def test_a_checkpoint_with_the_flat_training_record_of_earlier_versions_resumes_the_same(tmp_path):
    from charrnn.assemble import resume_options
    # the shipped model was saved before the model options were nested
    shipped = ckpt.load(Path(__file__).resolve().parent.parent / "corpora" / "shakespeare.safetensors")
    assert "hidden" in shipped.train_args and "model" not in shipped.train_args
    old = resume_options(shipped.train_args, {})
    assert (old.model.hidden, old.model.dropout, old.seed, old.minutes) == (256, 0.2, 1, 10.0)
    # and a run resumed from a flat record repeats the one resumed from the nested record bit for bit
    _trainer(prepare_out_dir(tmp_path / "a"), max_steps=3, hidden=5, dropout=0.1).run()
    ck = ckpt.load(tmp_path / "a" / "last.safetensors")
    assert ck.train_args["model"]["hidden"] == 5 and "hidden" not in ck.train_args
    flat = dataclasses.replace(ck, train_args={
        **{k: v for k, v in ck.train_args.items() if k != "model"},
        **{k: v for k, v in ck.train_args["model"].items() if k != "vocab_size"}})
    ckpt.save(tmp_path / "flat.safetensors", flat)
    flat = ckpt.load(tmp_path / "flat.safetensors")
    ends = []
    for name, base in (("nested", ck), ("flat", flat)):
        opts = resume_options(base.train_args, {"max_steps": 6, "out": str(tmp_path / name)})
        assert opts.model == dataclasses.replace(ck.config, vocab_size=opts.model.vocab_size)
        Trainer(opts, _text(), prepare_out_dir(tmp_path / name), show_progress=False, resume=base).run()
        ends.append(ckpt.load(tmp_path / name / "last.safetensors").params.flat)
    np.testing.assert_array_equal(*ends)

@pytest.mark.parametrize("field,value,why", [
    ("lr", math.nan, "--lr: nan is not a finite number"), ("eps", math.inf, "--eps: inf is not a finite number"),
    ("weight_decay", -1.0, "--weight-decay: -1 is out of range"), ("hidden", 0, "--hidden: 0 is out of range"),
    ("forget_bias", math.inf, "--forget-bias: inf"), ("max_epochs", 1e300, "--max-epochs"),
    ("seed", -1, "--seed"), ("clip", "norm:abc", "--clip: must be"), ("lr_schedule", "wavy", "--lr-schedule"),
    ("layers", 100000, "--layers: 100000 is out of range"), ("val_streams", 0, "--val-streams"),
    ("average", "sma", "--average: 'sma' is not one of off, ema"), ("average_decay", 1.0, "--average-decay: 1 is out"),
])
def test_every_option_is_checked_when_read_whether_given_or_from_a_checkpoint(field, value, why):
    with pytest.raises(ValueError, match=why.replace("(", r"\(")):
        TrainOptions.from_dict({field: value})
    from charrnn.assemble import resume_options
    with pytest.raises(ckpt.CheckpointError, match="the checkpoint's training options are malformed"):
        resume_options({**TrainOptions().to_dict(), field: value}, {})
    if field not in ("clip", "lr_schedule"):     # the model's fields nested, as to_dict saves them
        nested = TrainOptions().to_dict()
        (nested["model"] if field in nested["model"] else nested)[field] = value
        with pytest.raises(ValueError, match=why.split(":")[0]):
            TrainOptions.from_dict(nested)


def test_the_cli_and_the_options_share_one_table_of_ranges():
    from charrnn.options import RANGES
    from click.testing import CliRunner as Runner
    params = {p.name: p for p in cli.commands["train"].params}
    for name, (lo, hi, lo_open, hi_open) in RANGES.items():
        t = params[name].type
        assert t.min == lo and t.min_open == lo_open, name
        assert t.max in (hi, None), name
    assert Runner().invoke(cli, ["train", "x", "--lr", "nan"]).exit_code == 2
