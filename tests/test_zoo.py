"""The zoo (charrnn/zoo.py, charrnn/cli_zoo.py): weights-only export, the shipped model, and how
`sample`, `eval` and `train --init-from` find it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint as ckpt
from charrnn import zoo
from charrnn.config import ModelConfig
from charrnn.corpus import Vocab
from charrnn.model import init_params
from tiny_models import tiny_config
from tiny_models import run_main as charrnn_inproc   # main() in-process: (exit code, stdout, stderr)

SHIPPED = Path(__file__).resolve().parent.parent / "corpora" / "shakespeare.safetensors"


def charrnn(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    """The real process, with no $CHARRNN_CORPORA and its own empty cache."""
    env = {k: v for k, v in os.environ.items() if k != "CHARRNN_CORPORA"}
    env.update(CHARRNN_CACHE=str(cache), PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, cwd=cwd, env=env,
                          timeout=300)


def full_checkpoint() -> ckpt.Checkpoint:
    """A small checkpoint with everything a resumable one has: moments, carried state, RNG."""
    cfg = tiny_config(vocab_size=4, hidden=4, layers=1)
    params = init_params(cfg, np.random.default_rng(0))
    n = params.flat.size
    return ckpt.Checkpoint(
        config=cfg, vocab=Vocab("\nabc"), params=params,
        optimizer={"name": "adam", "hyper": {}, "t": 3},
        optim_state={"m": np.full(n, 0.5, np.float32), "v": np.full(n, 0.25, np.float32)},
        state=np.ones((1, 2, 8, 4), np.float32), progress={"step": 3, "epoch": 0, "cursor": 2, "best_val": 1.5},
        rng=np.random.default_rng(0).bit_generator.state,
        train_args={"val_frac": 0.05, "test_frac": 0.05,
                    "source": {"path": "/somewhere/shakespeare.txt", "encoding": "utf-8", "corpus": "shakespeare"}})


# ---------------------------------------------------------------- export
def test_export_weights_only_drops_what_only_resuming_needs(tmp_path, monkeypatch, capsys):
    ckpt.save(tmp_path / "full.safetensors", full_checkpoint())
    code, out, err = charrnn_inproc(["export", str(tmp_path / "full.safetensors"), "--weights-only",
                                     "-o", str(tmp_path / "w.safetensors"), "--meta", "val_bpc=2.06",
                                     "--meta", "command=charrnn train x --seed 1"], monkeypatch, capsys)
    assert code == 0 and out == "" and "weights only" in err
    _, tensors = ckpt.read_raw(tmp_path / "w.safetensors")
    assert tensors and all(k.startswith("param/") for k in tensors)
    w, full = ckpt.load(tmp_path / "w.safetensors"), ckpt.load(tmp_path / "full.safetensors")
    assert w.optimizer is None and w.optim_state == {} and w.state is None and w.rng is None
    assert np.array_equal(w.params.flat, full.params.flat) and w.vocab == full.vocab and w.config == full.config
    assert w.provenance["val_bpc"] == 2.06 and w.provenance["command"] == "charrnn train x --seed 1"
    assert len(w.provenance["date"]) == 10
    # the text is named by its catalogue name, not by a path on the machine that trained it
    assert w.train_args["source"] == {"encoding": "utf-8", "corpus": "shakespeare"}
    assert (tmp_path / "w.safetensors").stat().st_size < (tmp_path / "full.safetensors").stat().st_size / 2


def test_export_without_weights_only_keeps_everything(tmp_path, monkeypatch, capsys):
    ckpt.save(tmp_path / "full.safetensors", full_checkpoint())
    code, _, _ = charrnn_inproc(["export", str(tmp_path / "full.safetensors"), "-o", str(tmp_path / "c.safetensors"),
                                 "--meta", "note=kept"], monkeypatch, capsys)
    c = ckpt.load(tmp_path / "c.safetensors")
    assert code == 0 and set(c.optim_state) == {"m", "v"} and c.state is not None and c.rng is not None
    assert c.provenance["note"] == "kept"


def test_export_half_halves_the_weights_and_loads_them_widened_to_float32(tmp_path, monkeypatch, capsys):
    full = full_checkpoint()
    full.params.flat[0] = 1.0 + 2.0 ** -12          # below float16's resolution: the export rounds it
    ckpt.save(tmp_path / "full.safetensors", full)
    code, _, err = charrnn_inproc(["export", str(tmp_path / "full.safetensors"), "--weights-only", "--half",
                                   "-o", str(tmp_path / "h.safetensors")], monkeypatch, capsys)
    assert code == 0 and "float16" in err
    _, tensors = ckpt.read_raw(tmp_path / "h.safetensors")
    assert {t.dtype for t in tensors.values()} == {np.dtype("<f2")}
    h = ckpt.load(tmp_path / "h.safetensors")
    assert h.params.flat.dtype == np.float32 and h.provenance["weights"] == "float16"
    np.testing.assert_array_equal(h.params.flat, full.params.flat.astype(np.float16).astype(np.float32))
    assert h.params.flat[0] == 1.0
    w = ckpt.weights_only(full)
    ckpt.save(tmp_path / "w.safetensors", w)
    assert (tmp_path / "h.safetensors").stat().st_size < (tmp_path / "w.safetensors").stat().st_size


def test_export_half_refuses_a_resumable_file_and_weights_beyond_float16(tmp_path, monkeypatch, capsys):
    full = full_checkpoint()
    ckpt.save(tmp_path / "full.safetensors", full)
    code, _, err = charrnn_inproc(["export", str(tmp_path / "full.safetensors"), "--half",
                                   "-o", str(tmp_path / "h.safetensors")], monkeypatch, capsys)
    assert code == 2 and "--weights-only" in err and not (tmp_path / "h.safetensors").exists()
    with pytest.raises(ckpt.CheckpointError, match="weights-only"):
        ckpt.save(tmp_path / "h.safetensors", full, half=True)
    big = ckpt.weights_only(full)
    big.params.flat[3] = 1e5
    with pytest.raises(ckpt.CheckpointError, match="float16's range"):
        ckpt.save(tmp_path / "h.safetensors", big, half=True)
    assert not (tmp_path / "h.safetensors").exists()


def test_a_half_file_with_optimizer_state_is_refused_on_load(tmp_path):
    full = full_checkpoint()
    ckpt.save(tmp_path / "full.safetensors", full)
    _, tensors = ckpt.read_raw(tmp_path / "full.safetensors")
    raw = (tmp_path / "full.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    off, blobs = 0, []
    for name, arr in tensors.items():         # rewrite every weight as float16, keep the moments
        arr = arr.astype("<f2") if name.startswith("param/") else arr
        header[name] = {"dtype": "F16" if name.startswith("param/") else "F32", "shape": list(arr.shape),
                        "data_offsets": [off, off + arr.nbytes]}
        off += arr.nbytes
        blobs.append(arr.tobytes())
    hb = json.dumps(header).encode()
    (tmp_path / "bad.safetensors").write_bytes(len(hb).to_bytes(8, "little") + hb + b"".join(blobs))
    with pytest.raises(ckpt.CheckpointError, match="float16 weights with optimizer state"):
        ckpt.load(tmp_path / "bad.safetensors")


def test_export_refuses_a_malformed_meta_pair(tmp_path, monkeypatch, capsys):
    ckpt.save(tmp_path / "full.safetensors", full_checkpoint())
    code, _, err = charrnn_inproc(["export", str(tmp_path / "full.safetensors"), "-o", str(tmp_path / "x"),
                                   "--meta", "novalue"], monkeypatch, capsys)
    assert code == 2 and "KEY=VALUE" in err and not (tmp_path / "x").exists()


# ---------------------------------------------------------------- resolution
def test_resolve_prefers_paths_then_zoo_names_and_falls_back_to_the_default(tmp_path, monkeypatch):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    ckpt.save(shelf / "shakespeare.safetensors", ckpt.weights_only(full_checkpoint()))
    monkeypatch.setattr(zoo, "zoo_dir", lambda: shelf)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path, note = zoo.resolve(None)
    assert path == shelf / "shakespeare.safetensors"
    assert "shipped model 'shakespeare'" in note and "\n" not in note
    assert zoo.resolve("shakespeare") == (shelf / "shakespeare.safetensors", None)
    (work / "checkpoints" / "run").mkdir(parents=True)
    ckpt.save(work / "checkpoints" / "run" / "best.safetensors", full_checkpoint())
    assert zoo.resolve(None) == (Path("checkpoints/run/best.safetensors"), None)
    assert zoo.resolve("shakespeare")[0] == shelf / "shakespeare.safetensors"   # a zoo name always names the zoo
    (work / "shakespeare").mkdir()
    ckpt.save(work / "shakespeare" / "best.safetensors", full_checkpoint())
    assert zoo.resolve("shakespeare")[0] == Path("shakespeare/best.safetensors")  # unless a path of that name exists
    with pytest.raises(ckpt.CheckpointError, match=r"no such checkpoint.*: nope \(shipped models: shakespeare\)"):
        zoo.resolve("nope")
    with pytest.raises(ckpt.CheckpointError, match="shipped models: shakespeare"):
        zoo.resolve("../shelf/shakespeare")


def test_without_a_zoo_the_old_error_stands(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "zoo_dir", lambda: tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="none found under ./checkpoints"):
        zoo.resolve(None)


# ---------------------------------------------------------------- the shipped model
def test_the_shipped_model_is_small_weights_only_and_says_how_it_was_made():
    assert zoo.names() == ["shakespeare"] and zoo.path_of("shakespeare") == SHIPPED
    assert SHIPPED.stat().st_size <= 2_000_000           # float16 weights: the wheel stays under 3 MB
    _, tensors = ckpt.read_raw(SHIPPED)
    assert {t.dtype for t in tensors.values()} == {np.dtype("<f2")}
    m = ckpt.load(SHIPPED)
    assert m.optim_state == {} and m.state is None and m.rng is None and m.optimizer is None
    assert m.config == ModelConfig(vocab_size=65), "the shipped model is the default-flag one"
    assert m.provenance["weights"] == "float16"
    assert len(m.vocab.chars) == 65
    prov = m.provenance
    assert prov["command"].startswith("charrnn train shakespeare --minutes ")
    assert all(isinstance(prov[k], float) and 0 < prov[k] < 6.1 for k in ("val_bpc", "test_bpc"))
    assert len(prov["commit"]) >= 40 and len(prov["date"]) == 10
    assert m.train_args["source"] == {"encoding": "utf-8", "corpus": "shakespeare"}


def test_sample_with_no_checkpoints_uses_the_shipped_model_and_says_so_once(tmp_path):
    r = charrnn("sample", "--length", "120", "--seed", "1", cwd=tmp_path, cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr.decode()
    lines = [ln for ln in r.stderr.decode().splitlines()     # a cold Numba cache also says so
             if not ln.startswith(("compiling kernels", "kernels ready"))]
    assert len(lines) == 1 and "shipped model 'shakespeare'" in lines[0], lines
    named = charrnn("sample", "shakespeare", "--length", "120", "--seed", "1", cwd=tmp_path, cache=tmp_path / "cache")
    assert named.returncode == 0 and named.stderr == b"" and named.stdout == r.stdout
    assert len(r.stdout.decode().rstrip("\n")) >= 120


def test_eval_scores_the_shipped_model_on_a_file_and_on_its_own_splits(tmp_path):
    (tmp_path / "play.txt").write_text("ROMEO:\nWhat light through yonder window breaks?\n" * 20)
    r = charrnn("eval", "shakespeare", "play.txt", "--json", cwd=tmp_path, cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr.decode()
    assert 0 < json.loads(r.stdout)["bits_per_char"] < 6.1
    # the validation split comes from the shipped corpus (unpacked into the empty cache)
    r = charrnn("eval", "shakespeare", "--split", "val", "--json", cwd=tmp_path, cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["bits_per_char"] == pytest.approx(ckpt.load(SHIPPED).provenance["val_bpc"], abs=2e-4)


def test_train_init_from_a_shipped_model_keeps_its_vocabulary(tmp_path):
    (tmp_path / "lines.txt").write_text("Now is the winter of our discontent\nMade glorious summer.\n" * 40)
    (tmp_path / "accents.txt").write_text("Café, naïve façade.\n" * 40)
    flags = ["--max-steps", "2", "--seq-len", "16", "--batch-size", "4", "--device", "cpu"]
    r = charrnn("train", "lines.txt", "--init-from", "shakespeare", *flags, "--out", "tuned", cwd=tmp_path,
                cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr.decode()
    tuned, shipped = ckpt.load(tmp_path / "tuned/last.safetensors"), ckpt.load(SHIPPED)
    assert tuned.vocab == shipped.vocab and tuned.config == shipped.config and tuned.progress["step"] == 2
    r = charrnn("train", "accents.txt", "--init-from", "shakespeare", *flags, "--out", "x", cwd=tmp_path,
                cache=tmp_path / "cache")
    err = r.stderr.decode()
    assert r.returncode == 2 and "outside the checkpoint's vocabulary" in err and "'é'" in err


def test_zoo_list_shows_the_shipped_model(monkeypatch, capsys):
    code, out, _ = charrnn_inproc(["zoo", "list"], monkeypatch, capsys)
    row = next(ln for ln in out.splitlines() if ln.startswith("shakespeare"))
    assert code == 0 and f"2x{ModelConfig.hidden} LSTM" in row and "bits/char" in row and "charrnn train shakespeare" in row
    code, out, _ = charrnn_inproc(["corpus", "list"], monkeypatch, capsys)
    assert code == 0 and "shipped models: shakespeare" in out


def test_listing_marks_a_damaged_model_and_names_the_folder(tmp_path, monkeypatch):
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    ckpt.save(tmp_path / "tiny.safetensors", ckpt.weights_only(full_checkpoint(), {"date": "2026-01-02"}))
    monkeypatch.setattr(zoo, "zoo_dir", lambda: tmp_path)
    lines = zoo.listing().splitlines()
    assert lines[0].split() == ["NAME", "MODEL", "SIZE", "TRAINED"]
    assert lines[1].startswith("broken") and "damaged:" in lines[1]
    assert lines[2].startswith("tiny") and "1x4 LSTM" in lines[2] and lines[2].endswith("2026-01-02")
    assert lines[-1] == f"folder: {tmp_path}"
