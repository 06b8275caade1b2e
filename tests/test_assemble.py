"""charrnn/assemble.py: what a run settles before its first step. FILE resolved, options checked
(or a checkpoint's own, with the flags given again), --resume and --init-from held to the flags.
(prepare_run end to end: tests/test_train_options.py, test_reliability.py and the CLI tests.)"""
import dataclasses

import numpy as np
import pytest

from charrnn import assemble
from charrnn import checkpoint as ckpt
from charrnn.corpus import Vocab
from charrnn.errors import InputError
from charrnn.model import init_params
from charrnn.options import TrainOptions
from tiny_models import tiny_config


def base(byte_mode: bool = False, full: bool = True) -> ckpt.Checkpoint:
    cfg = tiny_config(vocab_size=4, hidden=4, layers=1)
    return ckpt.Checkpoint(config=cfg, vocab=Vocab("\nabc"), params=init_params(cfg, np.random.default_rng(0)),
                           optimizer={"name": "adam", "t": 1} if full else None,
                           rng=np.random.default_rng(0).bit_generator.state if full else None)


def test_resume_options_are_the_checkpoints_with_the_given_ones_over_them_and_unknown_names_dropped():
    saved = dict(TrainOptions(lr=0.5, seed=9).to_dict(), retired_option=1)
    opts = assemble.resume_options(saved, {"seed": 4})
    assert (opts.lr, opts.seed) == (0.5, 4)
    with pytest.raises(ckpt.CheckpointError, match="malformed"):
        assemble.resume_options({**saved, "lr": -1.0}, {})


def test_a_bad_option_is_a_usage_error_naming_its_flag():
    assert assemble.new_options({"hidden": 7}).model.hidden == 7
    with pytest.raises(InputError, match="--batch-size"):
        assemble.new_options({"batch_size": 0})


def test_stdin_is_read_as_is_and_a_path_is_not_a_catalogue_name(tmp_path):
    heard = []
    assert assemble.resolve_text("-", heard.append) == ("-", None)
    f = tmp_path / "notes.txt"
    f.write_text("abc")
    assert assemble.resolve_text(str(f), heard.append) == (str(f), None) and heard == []


def test_resume_refuses_a_weights_only_file():
    assemble.refuse_weights_only(base(), "run")
    with pytest.raises(InputError, match="--init-from w.safetensors"):
        assemble.refuse_weights_only(base(full=False), "w.safetensors")


def test_flags_next_to_a_checkpoint_agree_with_it_or_say_what_they_change():
    heard = []
    b = base()
    with pytest.raises(InputError, match="--hidden 8 disagrees with the checkpoint's 4"):
        assemble.keep_to_checkpoint(b, {"hidden": 8}, {"hidden"}, False, "--resume", heard.append)
    assemble.keep_to_checkpoint(b, {"hidden": 8}, set(), False, "--resume", heard.append)   # not given: no word
    assemble.keep_to_checkpoint(b, {"dropout": 0.3}, {"dropout"}, False, "--init-from", heard.append)
    assert b.config == dataclasses.replace(tiny_config(vocab_size=4, hidden=4, layers=1), dropout=0.3)
    assert heard == ["--dropout 0.3 replaces the checkpoint's 0"]
    with pytest.raises(InputError, match="--bytes"):
        assemble.keep_to_checkpoint(base(), {}, set(), True, "--resume", heard.append)


def test_a_catalogue_corpus_takes_its_standard_split_unless_a_fraction_is_given(monkeypatch):
    monkeypatch.setattr("charrnn.catalog.load_catalog", lambda source=None: {
        "wp": {"name": "wp", "split": {"val_frac": 0.1, "test_frac": 0.1, "source": "a paper"}},
        "plain": {"name": "plain", "split": None}})
    heard = []
    settings = {"val_frac": 0.05, "test_frac": 0.05}
    assemble.standard_split("wp", settings, set(), heard.append)
    assert settings == {"val_frac": 0.1, "test_frac": 0.1} and "standard split" in heard[0]
    given = {"val_frac": 0.02, "test_frac": 0.05}
    assemble.standard_split("wp", given, {"val_frac"}, heard.append)
    assemble.standard_split("plain", settings := {"val_frac": 0.05, "test_frac": 0.05}, set(), heard.append)
    assert given["val_frac"] == 0.02 and settings["val_frac"] == 0.05 and len(heard) == 1


@pytest.mark.parametrize("cell,rate", [("lstm", 1e-2), ("gru", 5e-3), ("rnn", 3e-3)])
def test_a_new_adam_run_given_no_rate_takes_its_cells_and_says_so_unless_it_is_the_lstms(cell, rate):
    heard = []
    opts = assemble.new_options({"cell": cell})
    assemble.settle_rate(opts, cell, set(), heard.append)
    assert opts.lr == rate
    assert heard == ([] if cell == "lstm" else [f"--lr {rate:g}: the default rate of adam for the {cell} cell "
                                               "(give --lr to choose)"])


@pytest.mark.parametrize("rule,rate", [("rmsprop", 5e-3), ("adadelta", 1.0), ("sgd", 1.0), ("nesterov", 0.3),
                                       ("adagrad", 1e-2)])
def test_each_other_rule_given_no_rate_takes_its_own_whatever_the_cell(rule, rate):
    for cell in ("lstm", "rnn"):
        opts = assemble.new_options({"cell": cell, "optimizer": rule})
        assemble.settle_rate(opts, cell, set(), lambda line: None)
        assert opts.lr == rate


def test_a_given_rate_is_kept_and_init_from_goes_by_the_checkpoints_cell():
    heard = []
    given = assemble.new_options({"cell": "rnn", "optimizer": "sgd", "lr": 0.02})
    assemble.settle_rate(given, "rnn", {"lr"}, heard.append)
    assert (given.lr, heard) == (0.02, [])
    adamw = assemble.new_options({"optimizer": "adamw"})     # --cell left at lstm, the checkpoint's is gru
    assemble.settle_rate(adamw, "gru", set(), heard.append)
    assert adamw.lr == 5e-3 and len(heard) == 1


def test_norm_auto_is_layer_for_the_lstm_and_none_for_the_other_cells_and_on_the_gpu():
    """And on the GPU the average is off unless asked for (it paid with the normalisation only)."""
    assert [assemble.new_options({"cell": c, "norm": "auto"}).model.norm for c in ("lstm", "gru", "rnn")] == \
        ["layer", "none", "none"]
    assert assemble.new_options({"norm": "none"}).model.norm == "none"
    with pytest.raises(InputError, match="layer normalisation is implemented for the LSTM cell only, not the RNN"):
        assemble.new_options({"cell": "rnn", "norm": "layer"})
    heard = []
    on_gpu = assemble.new_options({"norm": "auto", "device": "cuda"})
    assemble.settle_norm(on_gpu, "auto", heard.append)
    assert on_gpu.model.norm == "none" and heard == [
        "--norm none: the CUDA backend has no layer normalisation yet (--device cpu trains with it)"]
    asked = assemble.new_options({"norm": "layer", "device": "cuda"})
    assemble.settle_norm(asked, "layer", heard.append)      # asked for: the backend refuses it, one clear line
    on_cpu = assemble.new_options({"norm": "auto", "device": "cpu"})
    assemble.settle_norm(on_cpu, "auto", heard.append)
    assert asked.model.norm == on_cpu.model.norm == "layer" and len(heard) == 1
    for given, want in ((set(), "off"), ({"average"}, "ema")):
        opts = assemble.new_options({"device": "cuda"})
        assemble.settle_average(opts, given, heard.append)
        assert opts.average == want
    cpu = assemble.new_options({"device": "cpu"})
    assemble.settle_average(cpu, set(), heard.append)
    assert cpu.average == "ema" and len(heard) == 2 and heard[-1].startswith("--average off: on the GPU")


def test_recurrent_dropout_needs_the_layer_normalised_lstm_and_a_new_rate_replaces_the_checkpoints():
    """On the GPU (no layer normalisation there) it is one clear line, not a plain LSTM silently
    trained without it; next to a checkpoint a rate given takes effect, said, where the model has
    layer normalisation, and is one clear line where it has none."""
    assert assemble.new_options({"norm": "auto", "recurrent_dropout": 0.25}).model.recurrent_dropout == 0.25
    with pytest.raises(InputError, match="recurrent dropout is implemented for the layer-normalised LSTM"):
        assemble.new_options({"norm": "none", "recurrent_dropout": 0.25})
    on_gpu = assemble.new_options({"norm": "auto", "device": "cuda", "recurrent_dropout": 0.25})
    with pytest.raises(InputError, match="--recurrent-dropout needs a layer-normalised LSTM"):
        assemble.settle_norm(on_gpu, "auto", print)
    heard = []
    cfg = tiny_config(vocab_size=4, hidden=4, layers=1, norm="layer")
    ln = ckpt.Checkpoint(config=cfg, vocab=Vocab("\nabc"), params=init_params(cfg, np.random.default_rng(0)))
    assemble.keep_to_checkpoint(ln, {"recurrent_dropout": 0.3}, {"recurrent_dropout"}, False, "--resume", heard.append)
    assert ln.config == dataclasses.replace(cfg, recurrent_dropout=0.3)
    assert heard == ["--recurrent-dropout 0.3 replaces the checkpoint's 0"]
    with pytest.raises(InputError, match="--recurrent-dropout 0.3 does not fit the checkpoint's model"):
        assemble.keep_to_checkpoint(base(), {"recurrent_dropout": 0.3}, {"recurrent_dropout"}, False, "--resume",
                                    heard.append)


def test_zoneout_needs_the_layer_normalised_lstm_and_a_rate_is_part_of_the_checkpoints_model():
    """Refused on a plain LSTM and on the GPU (one clear line each); next to a checkpoint a rate
    that disagrees is refused like a shape flag (sampling and scoring take its expectation, so it
    changes what the model computes), and the same rate passes."""
    opts = assemble.new_options({"norm": "auto", "zoneout_cell": 0.5, "zoneout_hidden": 0.05})
    assert (opts.model.zoneout_cell, opts.model.zoneout_hidden) == (0.5, 0.05)
    with pytest.raises(InputError, match="zoneout is implemented for the layer-normalised LSTM"):
        assemble.new_options({"norm": "none", "zoneout_hidden": 0.1})
    on_gpu = assemble.new_options({"norm": "auto", "device": "cuda", "zoneout_cell": 0.5})
    with pytest.raises(InputError, match="zoneout needs a layer-normalised LSTM, which the CUDA backend"):
        assemble.settle_norm(on_gpu, "auto", print)
    cfg = tiny_config(vocab_size=4, hidden=4, layers=1, norm="layer", zoneout_cell=0.5)
    ln = ckpt.Checkpoint(config=cfg, vocab=Vocab("\nabc"), params=init_params(cfg, np.random.default_rng(0)))
    assemble.keep_to_checkpoint(ln, {"zoneout_cell": 0.5}, {"zoneout_cell"}, False, "--resume", print)
    with pytest.raises(InputError, match="--zoneout-cell 0.25 disagrees with the checkpoint's 0.5"):
        assemble.keep_to_checkpoint(ln, {"zoneout_cell": 0.25}, {"zoneout_cell"}, False, "--resume", print)


def test_a_new_layer_normalised_adam_run_given_no_beta2_takes_0_99_and_every_other_keeps_its_rules():
    """Written into the run's options, so its resume keeps it; a run that predates it (beta2 None
    in its train_args) resumes with Adam's 0.999."""
    from charrnn.optim import new_optimizer
    for optimizer, norm, beta2, want in (("adam", "layer", None, 0.99), ("adamw", "layer", None, 0.99),
                                         ("adam", "none", None, None), ("adam", "layer", 0.95, 0.95),
                                         ("rmsprop", "layer", None, None)):
        opts = assemble.new_options({"optimizer": optimizer, "norm": norm, **({"beta2": beta2} if beta2 else {})})
        assemble.settle_ln_defaults(opts, opts.model.norm, set())
        assert opts.beta2 == want, (optimizer, norm, beta2)
    ln = assemble.new_options({"norm": "auto"})
    assemble.settle_ln_defaults(ln, ln.model.norm, set())
    assert new_optimizer(ln, 10).hyper["beta2"] == 0.99
    resumed = assemble.resume_options(ln.to_dict(), {})
    assert new_optimizer(resumed, 10).hyper["beta2"] == 0.99
    old = {**ln.to_dict(), "beta2": None}
    assert new_optimizer(assemble.resume_options(old, {}), 10).hyper["beta2"] == 0.999


def test_a_new_layer_normalised_run_takes_the_longer_window_where_its_flags_were_not_given():
    """options.LN_WINDOW for each of --seq-len and --batch-size not given; other models, a given
    flag, and a resume (the run's own options) keep theirs."""
    def settled(norm, given=(), **kw):
        opts = assemble.new_options({"norm": norm, **kw})
        assemble.settle_ln_defaults(opts, opts.model.norm, set(given))
        return opts.seq_len, opts.batch_size

    assert settled("auto") == (100, 25)
    assert settled("layer", ["seq_len"], seq_len=30) == (30, 25)
    assert settled("layer", ["batch_size"], batch_size=50) == (100, 50)
    assert settled("layer", ["seq_len", "batch_size"], seq_len=50, batch_size=50) == (50, 50)
    assert settled("none") == (50, 50)
    assert settled("auto", cell="gru") == (50, 50)
    ln = assemble.new_options({"norm": "auto"})
    assemble.settle_ln_defaults(ln, ln.model.norm, set())
    resumed = assemble.resume_options(ln.to_dict(), {})
    assert (resumed.seq_len, resumed.batch_size) == (100, 25)
    old = assemble.resume_options({**ln.to_dict(), "seq_len": 50, "batch_size": 50}, {})
    assert (old.seq_len, old.batch_size) == (50, 50)
