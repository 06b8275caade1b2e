"""Untrusted checkpoints: hypothesis mutates a valid (tiny) checkpoint in every way we could
think of; loading must either give a sound checkpoint or raise CheckpointError, never anything
else. CHARRNN_FUZZ_EXAMPLES raises the example count (bench/fuzz_checkpoints.py does)."""
import json
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charrnn import checkpoint as ckpt
from charrnn.corpus import Vocab
from charrnn.model import init_params, param_shapes
from charrnn.optim import Optimizer
from tiny_models import tiny_config

EXAMPLES = int(os.environ.get("CHARRNN_FUZZ_EXAMPLES", "150"))   # per test; 4 tests -> 600 in CI
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORK = Path(tempfile.mkdtemp(prefix="charrnn-fuzz-"))


def _valid_bytes() -> bytes:
    cfg = tiny_config(vocab_size=3, hidden=2, layers=1, cell="lstm")
    p = init_params(cfg, np.random.default_rng(0))
    opt = Optimizer("adam", p.flat.size)
    opt.state["m"][:] = 0.5
    c = ckpt.Checkpoint(config=cfg, vocab=Vocab("abc"), params=p, optimizer=opt.to_meta(), optim_state=opt.state,
                        state=np.zeros((1, 2, 1, 2), np.float32),
                        progress={"step": 4, "epoch": 0, "cursor": 4, "lr": 0.002, "best_val": 1.5},
                        rng=np.random.default_rng(3).bit_generator.state,
                        train_args={"val_frac": 0.05, "test_frac": 0.05, "source": {"path": "/x"}},
                        metrics={"val_bpc": 1.5})
    path = WORK / "valid.safetensors"
    ckpt.save(path, c)
    return path.read_bytes()


VALID = _valid_bytes()
N_HEADER = struct.unpack("<Q", VALID[:8])[0]
HEADER = json.loads(VALID[8:8 + N_HEADER])
DATA = VALID[8 + N_HEADER:]


def _load_bytes(blob: bytes):
    path = WORK / "case.safetensors"
    path.write_bytes(blob)
    try:
        ck = ckpt.load(path)
    except ckpt.CheckpointError as e:
        msg = str(e)
        assert msg and "\n" not in msg            # one sentence for the user
        return None
    # whatever loads is sound: finite weights of the shapes its config says
    assert np.all(np.isfinite(ck.params.flat))
    for name, shape in param_shapes(ck.config):
        assert ck.params[name].shape == shape
    assert ck.vocab.size == ck.config.vocab_size
    return ck


def _with_header(header: dict, data: bytes = DATA, lie: int = 0) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) + lie) + h + data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


def test_the_unmutated_checkpoint_loads():
    ck = _load_bytes(VALID)
    assert ck is not None and ck.progress["step"] == 4


@FUZZ
@given(data=st.data())
def test_truncated_flipped_or_overwritten_bytes_load_soundly_or_fail_cleanly(data):
    blob = bytearray(VALID)
    kind = data.draw(st.sampled_from(["truncate", "flip", "overwrite", "append", "insert"]))
    if kind == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "overwrite":
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i:i + 8] = data.draw(st.binary(min_size=1, max_size=8))
    elif kind == "append":
        blob += data.draw(st.binary(min_size=1, max_size=64))
    else:
        i = data.draw(st.integers(0, len(blob)))
        blob[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    _load_bytes(bytes(blob))


@FUZZ
@given(length=st.integers(0, 2**64 - 1), tail=st.binary(max_size=64))
def test_any_header_length_is_judged_before_reading(length, tail):
    assert _load_bytes(struct.pack("<Q", length) + VALID[8:8 + 64] + tail) is None or length == N_HEADER


@FUZZ
@given(data=st.data())
def test_mutated_header_fields_are_validated(data):
    header = json.loads(json.dumps(HEADER))
    target = data.draw(st.sampled_from(sorted(header)))
    if target == "__metadata__":
        meta = header["__metadata__"]
        key = data.draw(st.sampled_from(sorted(meta) + ["extra"]))
        inner = json.loads(meta[key]) if key in meta and key not in ("format", "version") else None
        if isinstance(inner, dict) and inner and data.draw(st.booleans()):
            sub = data.draw(st.sampled_from(sorted(inner)))       # change one field inside the JSON
            inner[sub] = data.draw(json_values)
            meta[key] = json.dumps(inner)
        elif data.draw(st.booleans()):
            meta[key] = json.dumps(data.draw(json_values))
        else:
            meta[key] = data.draw(json_values)                     # not even a string
    else:
        entry = header[target]
        field = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "name", "drop"]))
        if field == "dtype":
            entry["dtype"] = data.draw(st.sampled_from(["F64", "I64", "U8", "F16", "BOOL", 7]))
        elif field == "shape":
            entry["shape"] = data.draw(st.lists(st.integers(-1, 2**41), max_size=5) | json_values)
        elif field == "data_offsets":
            entry["data_offsets"] = data.draw(st.lists(st.integers(-10, 2**41), max_size=3) | json_values)
        elif field == "name":
            header[data.draw(st.sampled_from(["param/zz", "optim/v2", "state2", "l0.Wx"]))] = header.pop(target)
        else:
            del header[target]
    _load_bytes(_with_header(header, lie=data.draw(st.sampled_from([0, 0, 0, 1, -1, 8]))))


@FUZZ
@given(cell=st.sampled_from(["lstm", "gru", "rnn"]), hidden=st.integers(1, 2**40), layers=st.integers(1, 2**40),
       embed=st.integers(0, 2**40), vocab=st.integers(1, 2**40))
def test_a_lying_config_never_allocates_what_the_file_does_not_hold(cell, hidden, layers, embed, vocab):
    header = json.loads(json.dumps(HEADER))
    cfg = json.loads(header["__metadata__"]["config"])
    cfg.update(cell=cell, hidden=hidden, layers=layers, embed=embed, vocab_size=vocab)
    header["__metadata__"]["config"] = json.dumps(cfg)
    ck = _load_bytes(_with_header(header))
    assert ck is None or (cell, hidden, layers, embed, vocab) == ("lstm", 2, 1, 0, 3)


@pytest.mark.parametrize("blob", [b"", b"\0" * 7, b"hello world, not a checkpoint\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64,
                                  struct.pack("<Q", 2) + b"[]", struct.pack("<Q", 2) + b"{}",
                                  struct.pack("<Q", 1 << 40) + b"{}"])
def test_things_that_are_not_checkpoints_are_refused(blob):
    assert _load_bytes(blob) is None


def test_a_newer_format_version_is_named():
    header = json.loads(json.dumps(HEADER))
    header["__metadata__"]["version"] = "99"
    (WORK / "v.safetensors").write_bytes(_with_header(header))
    with pytest.raises(ckpt.CheckpointError, match="version '99'"):
        ckpt.load(WORK / "v.safetensors")
