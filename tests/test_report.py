"""The training report, the per-validation samples train records for it, and the cell viewer."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from charrnn import checkpoint as ckpt
from charrnn.cli import cli
from charrnn.model import init_params
from charrnn.report import build_report, read_jsonl
from charrnn.svg import nice_ticks
from charrnn.viz import build, correlations, features, trace
from tiny_models import tiny_config
from vizrun import synthetic_text, train_tiny


@pytest.fixture(scope="module")
def text():
    return synthetic_text()


@pytest.fixture(scope="module")
def run(tmp_path_factory, text):
    return train_tiny(tmp_path_factory.mktemp("run"), text)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("text") / "probe.txt"
    p.write_text(synthetic_text(150, seed=1), encoding="utf-8")
    return p


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ---------------------------------------------------------------- samples at validation
def test_train_records_one_fixed_seed_sample_per_validation(run):
    evals = [r for r in read_jsonl(run / "metrics.jsonl")[0] if "val_bpc" in r]
    samples, bad = read_jsonl(run / "samples.jsonl")
    assert bad == 0 and len(samples) == len(evals) == 3
    assert [s["step"] for s in samples] == [r["step"] for r in evals]
    assert all(len(s["text"]) == 300 and s["seed"] == 1234 and s["temp"] == 0.8 for s in samples)


def test_recording_samples_leaves_training_unchanged(tmp_path, text):
    with_s = train_tiny(tmp_path / "a", text, steps=20)
    without = train_tiny(tmp_path / "b", text, steps=20, sample_chars=0)
    assert not (without / "samples.jsonl").exists()
    strip = lambda d: [{k: v for k, v in r.items() if k != "elapsed_s"}   # noqa: E731
                       for r in read_jsonl(d / "metrics.jsonl")[0]]
    assert strip(with_s) == strip(without)
    a = ckpt.load(with_s / "last.safetensors").params.flat
    b = ckpt.load(without / "last.safetensors").params.flat
    assert np.array_equal(a, b)


# ---------------------------------------------------------------- report
def test_report_has_curves_samples_config_and_final_metrics(run, tmp_path):
    out = tmp_path / "report.html"
    res = invoke("report", run, "-o", out)
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    curves = html.split('id="curves"')[1].split('id="diagnostics"')[0]
    assert curves.count('data-chart="line"') == 3
    for name in ("train (EMA)", "validation", "learning rate", "gradient norm"):
        assert re.search(rf'data-series="{re.escape(name)}" data-points="3"', html), name
    assert html.count('<pre class="sample">') == 3
    assert "Samples at each validation (3)" in html
    assert '<table class="final">' in html and "best validation bits/char" in html
    assert '<table class="config">' in html and "<td>hidden</td><td class=\"num\">12</td>" in html


def test_report_is_self_contained(run):
    html = build_report(run)
    assert not re.search(r"""(src|href)\s*=|<link|@import|url\(|https?://""", html)


def test_report_skips_a_torn_last_metrics_line(run, tmp_path):
    import shutil
    d = tmp_path / "torn"
    shutil.copytree(run, d)
    with open(d / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "ch')
    html = build_report(d)
    assert "1 unreadable log line(s) skipped" in html and html.count('<pre class="sample">') == 3


def test_report_on_a_directory_without_metrics_is_an_input_error(tmp_path):
    res = invoke("report", tmp_path, "-o", tmp_path / "r.html")
    assert res.exit_code == 2 and "not a charrnn run directory" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------- viewer
def test_viz_draws_one_panel_per_cell_with_hover_data(run, text_file, tmp_path):
    out = tmp_path / "cells.html"
    res = invoke("viz", run, text_file, "--cell", "0:3", "--cell", "1:11", "--show", "500", "-o", out)
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    assert html.count('class="panel mono"') == 2
    assert "cell 0:3, cell state tanh(c)" in html and "cell 1:11, cell state tanh(c)" in html
    assert 'id="found"' not in html                       # no ranking unless asked
    data = json.loads(re.search(r'id="viz-data">(.*?)</script>', html, re.S).group(1))
    assert len(data["text"]) == len(data["top"]) == len(data["values"][0]) == 500
    assert all(len(t) == 5 for t in data["top"])
    assert all(1 >= p[0] and all(a >= b for a, b in zip(p, p[1:])) and sum(p) <= 1.0001 for p in data["prob"])
    spans = re.search(r'data-panel="0">(.*?)</div>', html, re.S).group(1).count("<span")
    assert spans == 500


def test_viz_find_lists_cells_per_property_and_gate_saturation(run, text_file, tmp_path):
    out = tmp_path / "found.html"
    res = invoke("viz", run, text_file, "--find", "--top", "2", "-o", out)
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    table = re.search(r'<table class="found">(.*?)</table>', html, re.S).group(1)
    rows = re.findall(r"<tr><td>([^<]*)</td><td>(\d+):(\d+)</td>", table)
    assert [r[0] for r in rows] == ["position in the line"] * 2 + ["position in the word"] * 2 \
        + ['inside &quot;double quotes&quot;'] * 2 + ["inside brackets or parentheses"] * 2
    assert all(0 <= int(l) < 2 and 0 <= int(i) < 12 for _, l, i in rows)
    assert html.count('data-chart="scatter"') == 2        # one per layer
    for gate in ("input", "forget", "output"):
        assert len(re.findall(rf'data-series="{gate}" data-points="12"', html)) == 2
    assert html.count('class="panel mono"') >= 1


def test_viz_without_cells_ranks_them(run, text_file, tmp_path):
    res = invoke("viz", run, text_file, "-o", tmp_path / "c.html")
    assert res.exit_code == 0 and 'id="found"' in (tmp_path / "c.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def gru_ckpt(tmp_path_factory, text):
    """An untrained GRU checkpoint: enough for checking what the viewer accepts."""
    from charrnn.corpus import Vocab
    vocab = Vocab.from_text(text)
    cfg = tiny_config(vocab_size=vocab.size, hidden=6, layers=1, cell="gru")
    path = tmp_path_factory.mktemp("gru") / "best.safetensors"
    ckpt.save(path, ckpt.Checkpoint(config=cfg, vocab=vocab, params=init_params(cfg, np.random.default_rng(0))))
    return path


@pytest.mark.parametrize("which, args, message", [
    ("lstm", ["--gate", "update"], "the lstm cell has no update gate"),
    ("gru", ["--gate", "forget"], "the gru cell has no forget gate"),
    ("gru", ["--state", "c", "--cell", "0:1"], "no separate cell state"),
    ("lstm", ["--cell", "2:0"], "layer 2 out of range"),
    ("lstm", ["--cell", "0:12"], "index 12 out of range"),
    ("lstm", ["--cell", "zero"], "expected LAYER:INDEX"),
])
def test_viz_rejects_what_the_model_lacks_with_one_line(which, args, message, run, gru_ckpt, text_file, tmp_path):
    res = invoke("viz", run if which == "lstm" else gru_ckpt, text_file, *args, "-o", tmp_path / "x.html")
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_viz_gate_maps_to_the_cell_type(gru_ckpt, text_file, tmp_path):
    out = tmp_path / "g.html"
    res = invoke("viz", gru_ckpt, text_file, "--gate", "update", "--cell", "0:2", "-o", out)
    assert res.exit_code == 0, res.output
    html = out.read_text(encoding="utf-8")
    assert "cell 0:2, update gate" in html
    vals = json.loads(re.search(r'id="viz-data">(.*?)</script>', html, re.S).group(1))["values"][0]
    assert all(0.0 <= v <= 1.0 for v in vals)


def test_trace_carries_state_across_chunks(run, text):
    ck = ckpt.load(run / "best.safetensors")
    codes = ck.vocab.encode(text[:200])
    a = trace(ck.config, ck.params, codes, list(text[:200]), chunk=7)
    b = trace(ck.config, ck.params, codes, list(text[:200]), chunk=1000)
    for l in range(2):
        np.testing.assert_allclose(a.c[l], b.c[l], atol=1e-6)
        np.testing.assert_allclose(a.gates[l], b.gates[l], atol=1e-6)
    assert np.array_equal(a.top_idx, b.top_idx)


def test_build_returns_found_cells_sorted_by_strength(run, text):
    ck = ckpt.load(run / "best.safetensors")
    _, found = build(ck, text[:3000], [], find=True, top=4)
    for name in ("column", "word", "quotes", "brackets"):
        rs = [abs(f.r) for f in found if f.feature == name]
        assert len(rs) == 4 and rs == sorted(rs, reverse=True)


# ---------------------------------------------------------------- pieces
def test_features_track_line_word_quote_and_bracket():
    f = features(list('ab "c(d)"\nx'))
    assert f["column"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert f["word"].tolist() == [1, 2, 0, 0, 1, 0, 1, 0, 0, 0, 1]
    assert f["quotes"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    assert f["brackets"].tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0]


def test_correlations_match_numpy_and_refuse_a_constant_feature(rng):
    f = rng.normal(size=50)
    v = rng.normal(size=(50, 4))
    v[:, 2] = 3.0                                         # a dead cell correlates with nothing
    r = correlations(f, v)
    want = [np.corrcoef(f, v[:, j])[0, 1] for j in (0, 1, 3)]
    np.testing.assert_allclose(r[[0, 1, 3]], want, rtol=1e-10)
    assert r[2] == 0.0
    assert correlations(np.ones(50), v) is None


@settings(max_examples=60, deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(1e-3, 1e6))
def test_nice_ticks_are_few_increasing_and_inside_the_range(lo, width):
    hi = lo + width
    t = nice_ticks(lo, hi)
    assert 2 <= len(t) <= 11
    assert all(a < b for a, b in zip(t, t[1:]))
    span = hi - lo
    assert lo - 1e-6 * span <= t[0] and t[-1] <= hi + 1e-6 * span


def test_report_history_drops_records_a_rollback_superseded():
    from charrnn.report import history
    rows = [{"step": 10}, {"step": 20}, {"step": 30}, {"step": 20, "redo": 1}, {"step": 30, "redo": 1}]
    assert history(rows) == [{"step": 10}, {"step": 20, "redo": 1}, {"step": 30, "redo": 1}]


def test_report_without_checkpoint_or_validation_split_still_draws(tmp_path):
    rows = [{"step": s, "epoch": s / 10, "chars": 64 * s, "elapsed_s": s, "train_bpc": 5 - s / 10,
             "val_bpc": None, "lr": 0.002, "grad_norm": 1.0} for s in (10, 20)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = build_report(tmp_path)
    assert 'data-series="train (EMA)" data-points="2"' in html and 'data-series="validation" data-points="0"' in html
    assert "No readable checkpoint" in html and "No samples recorded" in html


def test_report_draws_and_tables_the_averaged_weights_only_when_the_run_scored_them(tmp_path):
    rows = [{"step": s, "epoch": s / 10, "chars": 64 * s, "elapsed_s": s, "train_bpc": 5 - s / 10,
             "val_bpc": 4 - s / 10, "lr": 0.002, "grad_norm": 1.0} for s in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "averaged weights" not in build_report(tmp_path)
    for r, v in zip(rows, (None, 2.25, 1.125)):
        if v is not None:
            r["val_bpc_average"] = v
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = build_report(tmp_path)
    assert 'data-series="validation, averaged weights" data-points="2"' in html
    assert "final validation bits/char, averaged weights" in html and "1.125" in html


def test_report_shows_an_even_selection_of_many_samples(tmp_path):
    from charrnn.report import MAX_SAMPLES
    n = 3 * MAX_SAMPLES
    (tmp_path / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "chars": s, "train_bpc": 1.0, "val_bpc": 1.0, "lr": 1.0, "grad_norm": 1.0}) + "\n"
        for s in range(1, n + 1)))
    (tmp_path / "samples.jsonl").write_text("".join(
        json.dumps({"step": s, "chars": s, "temp": 0.8, "seed": 1, "text": f"sample {s}"}) + "\n"
        for s in range(1, n + 1)))
    html = build_report(tmp_path)
    assert html.count('<pre class="sample">') == MAX_SAMPLES
    assert "sample 1<" in html and f"sample {n}<" in html


def test_viz_reads_a_byte_mode_model(tmp_path):
    from charrnn.train import Trainer, TrainOptions
    data = synthetic_text(200).encode() + bytes(range(128, 160))
    opts = TrainOptions.from_dict(dict(hidden=8, layers=1, seq_len=16, batch_size=4, max_steps=4, val_every=2,
                                       out=str(tmp_path)))
    Trainer(opts, data, tmp_path, show_progress=False).run()
    ck = ckpt.load(tmp_path / "best.safetensors")
    assert ck.vocab.byte_mode
    html, found = build(ck, data, ["0:1"], find=True)
    assert html.count('class="panel mono"') >= 1 and found
