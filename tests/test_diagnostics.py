"""The Deeplearning4j-style diagnostics: what diagnostics.py computes, what train logs to
metrics.jsonl and when, that logging them leaves training unchanged, and the report's charts."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from charrnn import checkpoint as ckpt
from charrnn.diagnostics import histograms, layer_stats, norms, probe_codes, update_ratios
from charrnn.model import Params, init_params, param_shapes
from charrnn.report import build_report
from charrnn.rundir import prepare_out_dir
from charrnn.train import Trainer, TrainOptions
from tiny_models import tiny_config
from vizrun import synthetic_text

TEXT = synthetic_text(300)


def _train(out, cell="lstm", **kw):
    base = dict(hidden=12, layers=2, cell=cell, seq_len=16, batch_size=4, max_steps=30, val_every=10,
                diag_every=4, dropout=0.1, lr=1e-2, device="cpu")
    t = Trainer(TrainOptions.from_dict({**base, **kw}), TEXT, prepare_out_dir(out), show_progress=False)
    t.sample_chars = 0
    t.run()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["event"] == "stop"
    return rows[:-1]


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_every_validation_and_every_nth_step_logs_finite_diagnostics(tmp_path, cell):
    rows = _train(tmp_path, cell)
    cfg = ckpt.load(tmp_path / "last.safetensors").config
    names = [n for n, _ in param_shapes(cfg)]
    vals = [r for r in rows if "val_bpc" in r]
    extra = [r for r in rows if "val_bpc" not in r]
    assert [r["step"] for r in vals] == [10, 20, 30]
    assert [r["step"] for r in extra] == [4, 8, 12, 16, 24, 28]      # 20 is a validation's own
    for r in rows:
        d = r["diag"]
        assert d["step"] == r["step"]
        for key in ("update_ratio", "param_norm", "grad_norm"):
            assert list(d[key]) == names and all(_finite(v) for v in d[key].values()), (key, d[key])
        assert all(-8 < v < 1 for v in d["update_ratio"].values())
        assert len(d["layers"]) == 2
        for layer in d["layers"]:
            assert _finite(layer["h"]) and 0 < layer["h"] <= 1
            assert ("c" in layer) == (cell == "lstm")
            if cell == "rnn":
                assert "sat" not in layer
            else:
                assert 0 <= layer["sat"] <= 1
                assert set(layer["sat_gates"]) == ({"i", "f", "o"} if cell == "lstm" else {"r", "z"})
    for r in vals:
        mats = [n for n, s in param_shapes(cfg) if len(s) == 2]
        assert list(r["hist"]) == mats
        shapes = dict(param_shapes(cfg))
        for n, h in r["hist"].items():
            assert sum(h["counts"]) == int(np.prod(shapes[n])) and h["lo"] <= h["hi"]


def test_diagnostics_leave_training_unchanged_and_can_be_switched_off(tmp_path):
    on = _train(tmp_path / "on")
    off = _train(tmp_path / "off", diag=False)
    assert not any("diag" in r or "hist" in r for r in off)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("elapsed_s", "diag", "hist")}   # noqa: E731
                          for r in rows if "val_bpc" in r]
    assert strip(on) == strip(off)
    a = ckpt.load(tmp_path / "on" / "last.safetensors")
    b = ckpt.load(tmp_path / "off" / "last.safetensors")
    assert np.array_equal(a.params.flat, b.params.flat)
    assert all(np.array_equal(a.optim_state[k], b.optim_state[k]) for k in a.optim_state)


def test_update_ratio_is_log10_of_the_step_over_the_weight_norm():
    cfg = tiny_config(vocab_size=3, hidden=2, layers=1, cell="rnn")
    after = init_params(cfg, np.random.default_rng(0))
    before = after.flat.copy()
    after["l0.Wh"] *= 1.01                          # a 1% step: ratio = 0.01 / 1.01
    after["out.b"][:] = 0.0                          # a zero tensor has no ratio
    r = update_ratios(before, after)
    assert r["l0.Wh"] == pytest.approx(math.log10(0.01 / 1.01), abs=1e-3)
    assert r["out.b"] is None and r["l0.Wx"] is None  # unchanged: no ratio either
    n = norms(after)
    assert n["l0.Wh"] == pytest.approx(float(np.linalg.norm(after["l0.Wh"])), rel=1e-5)


def test_saturation_counts_gates_pushed_past_0_1_and_0_9():
    cfg = tiny_config(vocab_size=4, hidden=3, layers=1, cell="lstm")
    p = Params(cfg)                                   # all weights zero: every gate is s(bias)
    H = cfg.hidden
    p["l0.b"][H:2 * H] = 10.0                          # forget gate always ~1
    p["l0.b"][3 * H:] = -10.0                          # output gate always ~0
    x = probe_codes(np.arange(40) % 4, streams=2, steps=10)
    (layer,) = layer_stats(cfg, p, x)
    assert layer["sat_gates"] == {"i": 0.0, "f": 1.0, "o": 1.0}   # input gate s(0) = 0.5
    assert layer["sat"] == pytest.approx(2 / 3, abs=1e-4)
    assert layer["h"] == 0.0 and layer["c"] == 0.0                 # g = tanh(0): nothing is written


def test_probe_is_a_fixed_window_of_consecutive_pieces():
    x = probe_codes(np.arange(1000), streams=4, steps=50)
    assert x.shape == (50, 4) and list(x[:3, 1]) == [50, 51, 52]
    assert probe_codes(np.arange(30), streams=4, steps=50).shape == (30, 1)
    assert probe_codes(np.arange(1)) is None


def test_histograms_cover_each_weight_matrix_only():
    cfg = tiny_config(vocab_size=5, hidden=4, layers=1, cell="gru", embed=3)
    h = histograms(init_params(cfg, np.random.default_rng(1)), bins=7)
    assert set(h) == {"embed", "l0.Wx", "l0.Wh", "out.W"}
    assert all(len(v["counts"]) == 7 for v in h.values())


def test_report_draws_the_diagnostics_with_the_minus_3_guide(tmp_path):
    _train(tmp_path)
    html = build_report(tmp_path)
    assert 'id="diagnostics"' in html and 'data-mark="-3"' in html
    assert html.count('data-chart="histogram"') == 5          # 2 x (Wx, Wh) + out.W
    assert "Saturated gates" in html and "Mean |c|" in html
