"""Arbitrary values through the command line and the option dataclasses (issue 27): Hypothesis
gives `train` and `sample` NaN, infinities, huge, negative, empty, unicode and non-numeric values
for their options and names, and the option dataclasses any JSON-like value. A command exits 0
or 2, never 1, with no traceback and one line on an error; a value that reaches the trainer is in
range; nothing is written anywhere (`train` stops before its first step: the trainer is a stand-in,
everything before it is real). CHARRNN_FUZZ_EXAMPLES raises the example count."""
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from charrnn import checkpoint as ckpt
from charrnn import train as train_mod
from charrnn.config import ModelConfig
from charrnn.corpus import Vocab
from charrnn.model import init_params
from charrnn.options import RANGES, TrainOptions, flag
from tiny_models import run_main, tiny_config

EXAMPLES = int(os.environ.get("CHARRNN_FUZZ_EXAMPLES", "250"))   # per test; ~10 s in all here
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

# what a shell can hand a flag: numbers in every spelling, words, unicode (lone surrogates from
# undecodable argv bytes included), nothing at all
SPECIAL = ["nan", "NaN", "-nan", "inf", "-inf", "+Infinity", "1e400", "-1e400", "1e-400", "4.9e-324", "0", "-0",
           "-0.0", "1", "-1", "0.5", "1.0", "2", "1e38", "3.5e38", "1e300", "9" * 30, "-" + "9" * 30, "0x10", "1_000",
           "١", "½", "1e", "", " ", "--", "-", "norm:", "value:nan", "none", "𝟙"]
NUMBER = st.one_of(st.sampled_from(SPECIAL), st.floats().map(repr), st.integers(-2 ** 70, 2 ** 70).map(str),
                   st.text(max_size=6))
NAME = st.one_of(st.sampled_from(["..", "../x", "/abs", ".", "a/../..", "a/b", "-", "~", "con", ""]),
                 st.text(st.characters(blacklist_categories=["Cs"]) | st.characters(min_codepoint=0xDC80,
                                                                                   max_codepoint=0xDCFF),
                         max_size=10))
CHOICES = {"--clip": ["norm:1", "value:0.5", "none", "3", "norm:0", "norm:-1", "value:inf"],
           "--optimizer": ["sgd", "adamw", "nesterov", "Adam", "lbfgs"], "--lr-schedule": ["constant", "cosine", "x"],
           "--encoding": ["latin-1", "utf-16", "klingon", "rot13", "base64"], "--cell": ["gru", "rnn", "LSTM"]}


def in_range(name: str):
    """Values inside the option's range (its edges and huge ones included), as the CLI spells them."""
    lo, hi, lo_open, hi_open = RANGES[name]
    if isinstance(TrainOptions().to_dict().get(name, ModelConfig().to_dict().get(name)), int):
        return st.one_of(st.integers(lo, min(hi, lo + 64)), st.integers(lo, hi)).map(str)
    return st.floats(lo, hi, exclude_min=lo_open, exclude_max=hi_open).map(repr)


# per flag: a value in range or anything at all, about half and half
VALUES = {**{flag(k): st.one_of(in_range(k), NUMBER) for k in RANGES},
          **{k: st.one_of(st.sampled_from(v), NUMBER) for k, v in CHOICES.items()}}
TRAIN_FLAGS = sorted(VALUES)


def files_under(root: Path) -> set:
    return {p for p in root.rglob("*") if not p.is_dir()}


class Stand_in:
    """The trainer, replaced: the options it is handed must all be in range; nothing is run."""
    seen = 0

    def __init__(self, opts, data, run_dir, **kw):
        opts.check()                   # a value out of range would raise here: an internal error, exit 1
        Stand_in.seen += 1
        self.out, self.log = Path(run_dir), kw["log"]

    def run(self) -> dict:
        return {"steps": 0, "epochs": 0.0, "best_val_bpc": None, "last_val_bpc": None, "reason": "stand-in",
                "elapsed_s": 0.0, "out": str(self.out)}


@pytest.fixture(scope="module")
def sandbox():
    root = Path(tempfile.mkdtemp(prefix="charrnn-clifuzz-"))
    work = root / "a" / "b" / "work"       # "../../.." from the work folder is still inside root
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("abcd efg\n" * 40)
    yield root, work
    shutil.rmtree(root, ignore_errors=True)


def _check(code: int, err: str) -> None:
    event(f"exit {code}")                  # --hypothesis-show-statistics: how many got through
    assert code in (0, 2), err
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:       # one error line, the last (notes before it, e.g. skipped prime characters, are fine)
        lines = err.splitlines()
        assert lines[-1].startswith("charrnn: error: ") and err.count("charrnn: error:") == 1, err


@FUZZ
@given(values=st.sampled_from(TRAIN_FLAGS).flatmap(lambda k: st.tuples(st.just(k), VALUES[k])).map(lambda kv: [kv])
       | st.lists(st.sampled_from(TRAIN_FLAGS).flatmap(lambda k: st.tuples(st.just(k), VALUES[k])), max_size=4),
       name=st.none() | NAME, out=st.none() | NAME.filter(lambda s: ".." not in s and not s.startswith(("/", "~"))),
       byte_mode=st.booleans())
def test_train_exits_0_or_2_and_writes_nothing_whatever_its_values(sandbox, monkeypatch, capsys, values, name, out,
                                                                  byte_mode):
    root, work = sandbox
    monkeypatch.chdir(work)
    monkeypatch.setattr(train_mod, "Trainer", Stand_in)
    before = files_under(root)
    args = ["train", "notes.txt", "--hidden=4", "--layers=1", "--seq-len=4", "--batch-size=2", "--device=cpu",
            *[f"{k}={v}" for k, v in values]]
    args += [f"--name={name}"] * (name is not None) + [f"--out=o/{out}"] * (out is not None) + ["--bytes"] * byte_mode
    code, _, err = run_main(args, monkeypatch, capsys)
    _check(code, err)
    assert files_under(root) == before                     # no file, anywhere (the lock is gone again)
    for p in root.rglob("*"):                              # directories: only inside the work folder
        assert p == work.parent.parent or p == work.parent or work in (p, *p.parents), p
    for p in list(work.iterdir()):                         # the next example starts afresh
        if p.is_dir():
            shutil.rmtree(p)


LR_FIND_FLAGS = sorted(f for f in VALUES if f[2:].replace("-", "_") in
                       {p.name for p in __import__("charrnn.cli", fromlist=["cli"]).cli.commands["lr-find"].params})
RATE = st.one_of(st.floats(1e-9, 10).map(repr), NUMBER)


@FUZZ
@given(values=st.lists(st.sampled_from(LR_FIND_FLAGS).flatmap(lambda k: st.tuples(st.just(k), VALUES[k])), max_size=3),
       start=st.none() | RATE, end=st.none() | RATE, steps=st.none() | st.one_of(st.integers(0, 400).map(str), NUMBER))
def test_lr_find_exits_0_or_2_whatever_its_values(sandbox, monkeypatch, capsys, values, start, end, steps):
    from charrnn import lrfind

    def no_test(opts, data, steps, start, end, **kw):    # everything before the range test is real
        opts.check()
        assert 0 < start < end and steps >= 13
        return lrfind.LrCurve()
    root, work = sandbox
    monkeypatch.chdir(work)
    monkeypatch.setattr(lrfind, "lr_find", no_test)
    before = files_under(root)
    given_ = {"--start": start, "--end": end, "--steps": steps}
    args = ["lr-find", "notes.txt", "--hidden=4", "--layers=1", "--device=cpu", *[f"{k}={v}" for k, v in values],
            *[f"{k}={v}" for k, v in given_.items() if v is not None]]
    code, _, err = run_main(args, monkeypatch, capsys)
    _check(code, err)
    assert files_under(root) == before


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    cfg = tiny_config(vocab_size=4, hidden=4, layers=1)
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    ckpt.save(path, ckpt.Checkpoint(config=cfg, vocab=Vocab("\nabc"), params=init_params(cfg, np.random.default_rng(0))))
    return path


LENGTH = st.one_of(st.integers(-3, 12).filter(bool).map(str),   # 0 is endless: not here
                   st.sampled_from(["", "nan", "1e3", "-" + "9" * 20, "x"]))
COUNT = st.one_of(st.integers(-2, 4).map(str), st.integers(10 ** 12, 10 ** 20).map(str), st.sampled_from(["", "½"]))


def mostly(valid):
    """None (the flag left out), a valid value, or anything at all: the valid ones three times as often."""
    return st.none() | st.one_of(valid, valid, valid, NUMBER)


def _sample(model, monkeypatch, capsys, **flags) -> int:
    args = ["sample", str(model), *[f"--{k.replace('_', '-')}={v}" for k, v in flags.items() if v is not None]]
    code, _, err = run_main(args, monkeypatch, capsys)
    _check(code, err)
    return code


@FUZZ
@given(temp=mostly(st.floats(0, 5).map(repr)), top_p=mostly(st.floats(0, 1, exclude_min=True).map(repr)),
       top_k=mostly(st.integers(0, 6).map(str)), seed=mostly(st.integers(0, 2 ** 64).map(str)),
       length=st.none() | LENGTH, num_samples=st.none() | COUNT, stop=st.none() | st.text(max_size=3),
       prime=st.none() | st.text("abc\n" + "é-", max_size=4).filter(lambda p: p != "-"),
       unknown=st.sampled_from(["error", "skip"]))
def test_sample_exits_0_or_2_whatever_its_values(model, monkeypatch, capsys, length, **flags):
    _sample(model, monkeypatch, capsys, length=length or "8", **flags)


@FUZZ
@given(temp=st.just("0") | st.floats(1e-4, 1e6).map(repr), top_p=st.floats(0, 1, exclude_min=True).map(repr),
       top_k=st.integers(0, 10 ** 6).map(str), seed=st.integers(0, 2 ** 62).map(str), length=st.integers(1, 12).map(str),
       num_samples=st.integers(1, 5).map(str), stop=st.none() | st.text("abc\n", min_size=1, max_size=2),
       prime=st.none() | st.text("abc\n", min_size=1, max_size=4), json=st.sampled_from([None, "", "x"]))
def test_sample_with_values_in_range_always_samples(model, monkeypatch, capsys, json, **flags):
    args = ["--json"] if json is not None else []
    code, out, err = run_main(["sample", str(model), *args, *[f"--{k.replace('_', '-')}={v}" for k, v in flags.items()
                                                              if v is not None]], monkeypatch, capsys)
    assert code == 0 and out, err


JSONISH = st.one_of(st.none(), st.booleans(), st.floats(), st.integers(-2 ** 80, 2 ** 80), st.text(max_size=5),
                    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
FIELDS = sorted(set(TrainOptions().to_dict()) - {"model"} | set(ModelConfig().to_dict()) - {"vocab_size"})


@settings(FUZZ, max_examples=EXAMPLES * 3)
@given(d=st.dictionaries(st.sampled_from(FIELDS + ["bogus"]), JSONISH, max_size=5), nest=st.booleans())
def test_the_option_dataclasses_take_a_value_in_range_or_raise_value_error(d, nest):
    model_keys = set(ModelConfig().to_dict())
    rec = {k: v for k, v in d.items() if not (nest and k in model_keys)}
    if nest:
        rec["model"] = {k: v for k, v in d.items() if k in model_keys}
    try:
        opts = TrainOptions.from_dict(rec)
    except ValueError:
        return
    opts.check()
    for name, (lo, hi, _, _) in RANGES.items():          # what was taken is a finite number in range
        v = getattr(opts.model if name in model_keys else opts, name)
        assert v is None or (math.isfinite(v) and lo <= v <= hi), (name, v)
    assert TrainOptions.from_dict(opts.to_dict()) == opts
