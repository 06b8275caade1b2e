"""charrnn/checkpoint.py: the file round-trips every field, is written atomically, refuses what it
must not hold, and `export` copies it weights-only, in float16 or whole, stamped with where it came from.
(Damaged and hostile files: tests/test_checkpoint_fuzz.py.)"""
import json
import os

import numpy as np
import pytest

from charrnn import checkpoint as ckpt
from charrnn.corpus import Vocab
from charrnn.errors import InputError
from charrnn.model import init_params
from tiny_models import tiny_config


def test_checkpoint_round_trips_every_field(tmp_path):
    cfg = tiny_config(vocab_size=4, hidden=3, layers=2, cell="gru")
    p = init_params(cfg, np.random.default_rng(0))
    rng = np.random.default_rng(5)
    c = ckpt.Checkpoint(config=cfg, vocab=Vocab("abcd"), params=p, optimizer={"name": "adam", "t": 3},
                        optim_state={"m": np.ones(p.flat.size, np.float32)},
                        state=np.zeros((2, 1, 7, 3), np.float32), progress={"step": 3},
                        average=np.linspace(-1, 1, p.flat.size, dtype=np.float32),
                        rng=rng.bit_generator.state, train_args={"lr": 0.1}, metrics={"val_bpc": 2.0})
    ckpt.save(tmp_path / "a.safetensors", c)
    d = ckpt.load(tmp_path / "a.safetensors")
    assert d.config == cfg and d.vocab == c.vocab and np.array_equal(d.params.flat, p.flat)
    assert np.array_equal(d.optim_state["m"], c.optim_state["m"]) and d.state.shape == (2, 1, 7, 3)
    assert np.array_equal(d.average, c.average)
    assert d.progress == {"step": 3} and d.rng == rng.bit_generator.state and d.metrics == {"val_bpc": 2.0}
    assert not [f for f in os.listdir(tmp_path) if f != "a.safetensors"]     # no temp file left


def full_checkpoint() -> ckpt.Checkpoint:
    cfg = tiny_config(vocab_size=4, hidden=4, layers=1)
    params = init_params(cfg, np.random.default_rng(0))
    n = params.flat.size
    return ckpt.Checkpoint(config=cfg, vocab=Vocab("\nabc"), params=params, optimizer={"name": "adam", "t": 3},
                           optim_state={"m": np.full(n, 0.5, np.float32), "v": np.full(n, 0.25, np.float32)},
                           state=np.ones((1, 2, 8, 4), np.float32), progress={"step": 3},
                           average=np.full(n, 0.125, np.float32), rng=np.random.default_rng(0).bit_generator.state, provenance={"command": "made here"})


def test_non_finite_weights_are_refused_and_nothing_is_left_behind(tmp_path):
    c = full_checkpoint()
    c.params.flat[2] = np.inf
    with pytest.raises(ckpt.CheckpointError, match="non-finite"):
        ckpt.save(tmp_path / "a.safetensors", c)
    assert not os.listdir(tmp_path)


def test_export_weights_only_in_half_keeps_the_provenance_and_stamps_date_and_meta(tmp_path):
    ckpt.save(tmp_path / "full.safetensors", full_checkpoint())
    ckpt.export(str(tmp_path / "full.safetensors"), tmp_path / "w.safetensors", only_weights=True, half=True,
                meta={"commit": "abc"})
    w = ckpt.load(tmp_path / "w.safetensors")
    assert w.optimizer is None and w.rng is None and w.state is None and not w.optim_state and w.average is None
    assert w.params.flat.dtype == np.float32
    np.testing.assert_array_equal(w.params.flat, full_checkpoint().params.flat.astype(np.float16))
    prov = w.provenance
    assert prov["command"] == "made here" and prov["commit"] == "abc" and prov["weights"] == "float16"
    assert len(prov["date"]) == 10 and prov["date"][4] == "-"


def test_export_whole_keeps_what_resuming_needs_and_half_alone_is_refused(tmp_path):
    ckpt.save(tmp_path / "full.safetensors", full_checkpoint())
    ckpt.export(str(tmp_path / "full.safetensors"), tmp_path / "c.safetensors", meta={"date": "2020-01-01"})
    c = ckpt.load(tmp_path / "c.safetensors")
    assert c.optimizer["name"] == "adam" and set(c.optim_state) == {"m", "v"} and c.progress == {"step": 3}
    np.testing.assert_array_equal(c.average, full_checkpoint().average)
    assert c.provenance == {"command": "made here", "date": "2020-01-01"}
    with pytest.raises(InputError, match="--half needs --weights-only"):
        ckpt.export(str(tmp_path / "full.safetensors"), tmp_path / "h.safetensors", half=True)
    assert not (tmp_path / "h.safetensors").exists()


@pytest.mark.parametrize("bad", ["short", "nan", "f64"])
def test_malformed_averaged_weights_are_refused_on_load(tmp_path, bad):
    c = full_checkpoint()
    n = c.params.flat.size
    tensors = {f"param/{k}": np.ascontiguousarray(c.params[k]) for k in c.params}
    tensors["average"] = {"short": np.zeros(n - 1, np.float32), "nan": np.full(n, np.nan, np.float32),
                          "f64": np.zeros(n, np.float64)}[bad]
    meta = {"format": ckpt.FORMAT, "version": str(ckpt.VERSION), "config": json.dumps(c.config.to_dict()),
            "vocab": json.dumps(c.vocab.to_meta()), "optimizer": "null", "progress": "{}", "rng": "null",
            "train_args": "{}", "metrics": "{}"}
    ckpt.write_tensors(tmp_path / "a.safetensors", tensors, meta)
    with pytest.raises(ckpt.CheckpointError, match="the averaged weights are malformed"):
        ckpt.load(tmp_path / "a.safetensors")
