"""charrnn/dynamic.py: dynamic evaluation scores each segment, then steps on it; rate 0 is static
evaluation; each step is the reference's gradient step; the checkpoint on disk never changes."""
import hashlib
import json
import math
import re

import numpy as np
import pytest

from charrnn import reference as ref
from charrnn.backends.cpu import CpuBackend
from charrnn.dynamic import Dynamic, dynamic_evaluate, gradient_rms
from charrnn.evaluate import evaluate
from charrnn.model import Params, init_params
from tiny_models import run_main, tiny_config, train, word_text

CODES = np.random.default_rng(3).integers(0, 7, 131)       # 130 predictions: segments of 20, and 10 left


def _backend(cell="lstm", dtype=np.float64, norm="none"):
    """norm "zoneout": a layer-normalised LSTM with zoneout and both dropouts, which dynamic
    evaluation leaves out (zoneout in its expectation)."""
    noise = dict(zoneout_cell=0.4, zoneout_hidden=0.2, dropout=0.3, recurrent_dropout=0.3) if norm == "zoneout" else {}
    cfg = tiny_config(vocab_size=7, hidden=5, layers=2, cell=cell, norm="layer" if norm == "zoneout" else norm, **noise)
    p = init_params(cfg, np.random.default_rng(1), dtype=np.float64)
    p.flat[:] = np.random.default_rng(2).normal(0, 0.4, p.flat.size)
    return CpuBackend(cfg, Params(cfg, p.flat.astype(dtype)))


def _ms(be):
    return np.random.default_rng(5).uniform(0.01, 1.0, be.params_host().flat.size).astype(np.float32)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("rule,decay", [("sgd", 0.0), ("rms", 0.0), ("rms", 0.3)])
def test_rate_zero_is_static_evaluation_over_the_same_segments_exactly(cell, rule, decay):
    be = _backend(cell, np.float32)
    want, n = evaluate(be, CODES, seq_len=20)
    got, m, _ = dynamic_evaluate(_backend(cell, np.float32), CODES, Dynamic(rule, lr=0.0, decay=decay, seq_len=20),
                                 _ms(be))
    assert (got, m) == (want, n)


def _ref_step(p, cfg, x, y, state):
    """The reference's summed loss, gradient of the segment's mean loss, and new state."""
    loss, cache, new_state = ref.forward(p, cfg, x, y, state)
    g = Params(cfg, np.zeros_like(p.flat))
    ref.backward(p, g, cfg, cache, scale=1.0 / x.size)
    return loss, g.flat, new_state


@pytest.mark.parametrize("rule,norm", [("sgd", "none"), ("rms", "none"), ("rms", "layer"), ("sgd", "zoneout")])
def test_each_segment_is_scored_before_its_step_and_the_step_is_the_references(rule, norm):
    """Two segments in float64: the first scored with the trained weights, then one step (by hand
    from the reference's gradient), the second scored with the stepped weights from the carried
    state, then its own step. Also for a layer-normalised LSTM, and one that zones out and drops
    out in training: scored and stepped without masks, in zoneout's expectation."""
    be = _backend(norm=norm)
    cfg, w0 = be.cfg, be.params_host().flat.copy()
    ms = _ms(be).astype(np.float64)
    dyn = Dynamic(rule, lr=0.05 if rule == "sgd" else 0.002, decay=0.2, seq_len=20)
    codes = CODES[:41]
    got, n, state = dynamic_evaluate(be, codes, dyn, _ms(be))

    def step(w, g):
        if rule == "sgd":
            return w - dyn.lr * g
        mean = ms.mean()
        w = w - dyn.lr * g / (ms + dyn.eps * mean)
        return w + np.minimum(1.0, dyn.decay / mean * ms) * (w0 - w)

    w, st, want = w0.copy(), be.zero_state(1).astype(np.float64), 0.0
    for a in (0, 20):
        x, y = codes[a:a + 20].reshape(-1, 1), codes[a + 1:a + 21].reshape(-1, 1)
        loss, g, st = _ref_step(Params(cfg, w), cfg, x, y, st)
        want += loss
        w = step(w, g)
    assert n == 40 and got == pytest.approx(want, rel=1e-9)
    np.testing.assert_allclose(be.params_host().flat, w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state, st, rtol=1e-9, atol=1e-12)
    assert not np.array_equal(be.params_host().flat, w0)


def test_the_rms_rule_needs_the_statistics_and_a_diverging_rate_is_one_clear_error():
    from charrnn.errors import InputError
    with pytest.raises(ValueError, match="statistics"):
        dynamic_evaluate(_backend(), CODES, Dynamic("rms"), None)
    with pytest.raises(InputError, match="too high"):
        dynamic_evaluate(_backend(dtype=np.float32), CODES, Dynamic("sgd", lr=1e38), None)


@pytest.mark.parametrize("bad", [dict(rule="adam"), dict(lr=float("nan")), dict(lr=-1.0), dict(decay=float("inf")),
                                 dict(seq_len=0), dict(eps=-0.1)])
def test_settings_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match="--dynamic"):
        Dynamic(**bad)


def test_gradient_rms_is_the_root_mean_square_over_windows_and_leaves_the_weights():
    be = _backend()
    w0 = be.params_host().flat.copy()
    codes = np.random.default_rng(4).integers(0, 7, 401)
    ms = gradient_rms(be, codes, seq_len=10, batch=4)
    assert np.array_equal(be.params_host().flat, w0)
    # by hand: 4 streams of 100, windows of 10, the state carried
    sq, state = np.zeros_like(w0), be.zero_state(4)
    for t0 in range(0, 100, 10):
        x = np.stack([codes[s * 100 + t0:s * 100 + t0 + 10] for s in range(4)], axis=1)
        y = np.stack([codes[s * 100 + t0 + 1:s * 100 + t0 + 11] for s in range(4)], axis=1)
        _, state = be.train_step(x, y, state)
        sq += be.grad_host().flat ** 2
    np.testing.assert_allclose(ms, np.sqrt(sq / 10), rtol=1e-6)
    assert ms.dtype == np.float32 and (ms > 0).any()


# ---------------------------------------------------------------- through the command line
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dyn")
    text = tmp / "words.txt"
    text.write_text(word_text(["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, "], 3000))
    return train(text, tmp / "run", steps=40), text


def test_eval_dynamic_leaves_the_checkpoint_unchanged_and_keeps_its_statistics_beside_it(run, monkeypatch, capsys):
    out, text = run
    ck = out / "best.safetensors"
    before = hashlib.sha256(ck.read_bytes()).hexdigest()
    code, stdout, err = run_main(["eval", str(ck), "--split", "val", "--dynamic", "--json"], monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(stdout)
    assert res["dynamic"] == {"rule": "rms", "lr": Dynamic().lr, "decay": 0.0, "seq_len": 50, "eps": 0.01}
    assert "computing the gradient statistics" in err and (out / "best.gradstats").is_file()
    assert hashlib.sha256(ck.read_bytes()).hexdigest() == before
    code, stdout2, err2 = run_main(["eval", str(ck), "--split", "val", "--dynamic", "--json"], monkeypatch, capsys)
    assert code == 0 and "computing" not in err2 and json.loads(stdout2) == res     # kept, and the same


def test_eval_dynamic_lr_auto_reports_the_search_and_scores_with_the_chosen_rate(run, monkeypatch, capsys):
    out, _ = run
    code, stdout, err = run_main(["eval", str(out), "--dynamic", "--dynamic-rule", "sgd", "--dynamic-lr", "auto",
                                  "--json"], monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(stdout)
    tried = {t["lr"]: t["val_bits_per_char"] for t in res["dynamic_search"]}
    assert res["dynamic"]["lr"] == min(tried, key=tried.get) and "chose --dynamic-lr" in err


def test_split_tail_is_validation_and_test_as_one_stream(run, monkeypatch, capsys):
    out, _ = run
    got = {}
    for split in ("val", "test", "tail"):
        code, stdout, err = run_main(["eval", str(out), "--split", split, "--json"], monkeypatch, capsys)
        assert code == 0, err
        got[split] = json.loads(stdout)
    assert got["tail"]["chars"] == got["val"]["chars"] + got["test"]["chars"] + 1
    assert math.isclose(got["tail"]["nats_per_char"] * math.log2(math.e), got["tail"]["bits_per_char"])


@pytest.mark.parametrize("args,msg", [
    (["--dynamic", "--dynamic-lr", "nan"], "--dynamic-lr"),
    (["--dynamic", "--dynamic-lr", "fast"], "--dynamic-lr must be a number or auto"),
    (["--dynamic-lr", "0.1"], "needs --dynamic"),
    (["--dynamic", "--dynamic-decay", "-1"], "--dynamic-decay"),
    (["--dynamic", "--dynamic-rule", "sgd", "--dynamic-lr", "1e38"], "too high"),
])
def test_bad_dynamic_flags_are_one_line_and_exit_2(run, monkeypatch, capsys, args, msg):
    out, _ = run
    code, stdout, err = run_main(["eval", str(out), "--split", "val", *args], monkeypatch, capsys)
    assert code == 2 and stdout == "" and msg in err and len(err.strip().splitlines()) == 1, err


def test_sample_adapt_with_an_empty_file_writes_exactly_the_plain_sample(run, tmp_path, monkeypatch, capsys):
    out, _ = run
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    args = ["sample", str(out), "--seed", "4", "-n", "120", "--prime", "the "]
    code, plain, _ = run_main(args, monkeypatch, capsys)
    code2, adapted, err = run_main([*args, "--adapt", str(empty)], monkeypatch, capsys)
    assert code == code2 == 0 and adapted == plain and "nothing adapted" in err


def test_sample_adapt_learns_the_file_and_continues_it_from_the_adapted_weights(run, tmp_path, monkeypatch, capsys):
    out, _ = run
    letter = tmp_path / "letter.txt"
    letter.write_text("dog sat far. " * 60)             # a pattern the model was not trained on
    args = ["sample", str(out), "--seed", "4", "-n", "200"]
    code, plain, _ = run_main(args, monkeypatch, capsys)
    code2, adapted, err = run_main([*args, "--adapt", str(letter)], monkeypatch, capsys)
    assert code == code2 == 0, err
    line = next(ln for ln in err.splitlines() if ln.startswith("adapted to"))
    before, after = (float(v) for v in re.findall(r"([\d.]+) (?:bits/char before|after)", line))
    assert "780 characters" in line and after < before - 0.05
    assert adapted != plain
    code3, again, _ = run_main([*args, "--adapt", str(letter)], monkeypatch, capsys)
    assert again == adapted                              # seeded: the same text again
