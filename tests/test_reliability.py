"""Faults during training: exact resume, signals, numerical faults, atomic checkpoints, the run
directory, and large corpora with bounded memory. Tiny models and texts made here."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint as ckpt
from charrnn.corpus import CorpusError
from charrnn.rundir import prepare_out_dir
from charrnn.train import Trainer, TrainingDiverged, TrainingInterrupted, TrainOptions

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NUMBA_NUM_THREADS": "2"}


def charrnn(*args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "charrnn", *args], capture_output=True, cwd=cwd, env=ENV,
                          timeout=300, **kw)


def words(n: int, seed: int = 0) -> str:
    w = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so "]
    r = np.random.default_rng(seed)
    return "".join(w[i] for i in r.integers(0, len(w), n))


TEXT = words(300)           # ~1200 characters: 2 epochs of 8 x 16 windows is ~16 steps


def opts(**kw) -> TrainOptions:
    base = dict(hidden=8, layers=2, seq_len=8, batch_size=8, dropout=0.2, lr=3e-3, lr_plateau=0.7,
                lr_decay=0.9, lr_decay_after=1, val_every=5, max_epochs=3, device="cpu", seed=3)
    base.update(kw)
    return TrainOptions.from_dict(base)


def state_of(path: Path):
    """Everything a resumed run depends on, from a checkpoint."""
    ck = ckpt.load(path)
    pr = {k: v for k, v in ck.progress.items() if k != "elapsed"}
    return ck.params.flat.copy(), {k: v.copy() for k, v in ck.optim_state.items()}, pr, ck.rng, ck.state


def assert_same(a, b):
    assert np.array_equal(a[0], b[0])                      # bit-identical weights
    assert a[1].keys() == b[1].keys() and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
    assert a[2] == b[2] and a[3] == b[3] and np.array_equal(a[4], b[4])


def val_records(run: Path):
    recs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in recs if "val_bpc" in r and r.get("scheduled", True)]


# ---------------------------------------------------------------- exact resume
@pytest.mark.parametrize("cell,optimizer,extra", [("lstm", "adam", {}), ("gru", "rmsprop", {}),
                                                  ("lstm", "adamw", {"weight_decay": 0.1}),
                                                  ("rnn", "adadelta", {"lr": 1.0, "rho": 0.8}),
                                                  ("gru", "sgd", {"lr": 0.3, "momentum": 0.5})])
def test_n_steps_then_resume_then_m_steps_equals_n_plus_m_bit_for_bit(tmp_path, cell, optimizer, extra):
    n, total = 7, 37                      # crosses two epoch boundaries, six validations, a plateau or two
    kw = dict(cell=cell, optimizer=optimizer, **extra)
    whole = tmp_path / "whole"
    Trainer(opts(max_steps=total, **kw), TEXT, prepare_out_dir(whole), show_progress=False).run()
    part = tmp_path / "part"
    Trainer(opts(max_steps=n, **kw), TEXT, prepare_out_dir(part), show_progress=False).run()
    ck = ckpt.load(part / "last.safetensors")
    assert ck.progress["step"] == n and ck.optimizer["name"] == optimizer
    assert ck.optim_state and all(v.any() for v in ck.optim_state.values())
    t = Trainer(opts(max_steps=total, **kw), TEXT, part, show_progress=False, resume=ck)
    assert t.progress.step == n and t.progress.cursor == ck.progress["cursor"]
    t.run()
    assert_same(state_of(whole / "last.safetensors"), state_of(part / "last.safetensors"))
    assert ckpt.load(whole / "last.safetensors").progress["epoch"] == 2
    # the validation schedule is unchanged by the pause: same scheduled records, same numbers
    assert val_records(whole) == val_records(part)


def test_a_signal_mid_run_saves_last_and_resuming_from_it_is_exact(tmp_path, monkeypatch):
    whole, part = tmp_path / "whole", tmp_path / "part"
    Trainer(opts(max_steps=23), TEXT, prepare_out_dir(whole), show_progress=False).run()
    t = Trainer(opts(max_steps=23), TEXT, prepare_out_dir(part), show_progress=False)
    real = t.be.train_step

    def step_then_signal(*a):
        out = real(*a)
        if t.progress.step == 11:                  # the 12th step is under way when SIGTERM arrives
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    monkeypatch.setattr(t.be, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted) as e:
        t.run()
    assert e.value.exit_code == 143
    ck = ckpt.load(part / "last.safetensors")
    assert ck.progress["step"] == 12 and ck.metrics.get("interrupted")
    Trainer(opts(max_steps=23), TEXT, part, show_progress=False, resume=ck).run()
    assert_same(state_of(whole / "last.safetensors"), state_of(part / "last.safetensors"))


def test_the_time_budget_counts_the_whole_run_across_resumes(tmp_path):
    t = Trainer(opts(max_steps=4), TEXT, prepare_out_dir(tmp_path), show_progress=False)
    t.run()
    ck = ckpt.load(tmp_path / "last.safetensors")
    ck.progress["elapsed"] = 120.0                       # two minutes already spent
    res = Trainer(opts(minutes=1.0), TEXT, tmp_path, show_progress=False, resume=ck).run()
    assert res["steps"] == 4 and res["reason"].startswith("time budget")      # not one step more
    res = Trainer(opts(minutes=60.0, max_steps=6), TEXT, tmp_path, show_progress=False, resume=ck).run()
    assert res["steps"] == 6 and res["elapsed_s"] >= 120.0


def test_resume_through_the_cli_takes_the_runs_own_options(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    flags = ["--hidden", "8", "--layers", "1", "--seq-len", "8", "--batch-size", "8", "--val-every", "4",
             "--dropout", "0.1", "--lr-plateau", "0.5", "--max-epochs", "3", "--device", "cpu"]
    assert charrnn("train", "t.txt", *flags, "--max-steps", "30", "--out", "whole", cwd=tmp_path).returncode == 0
    assert charrnn("train", "t.txt", *flags, "--max-steps", "9", "--out", "part", cwd=tmp_path).returncode == 0
    # only the new stopping point is given: everything else comes from the checkpoint
    r = charrnn("train", "t.txt", "--resume", "part/last.safetensors", "--max-steps", "30", "--device", "cpu",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert_same(state_of(tmp_path / "whole/last.safetensors"), state_of(tmp_path / "part/last.safetensors"))


def test_resume_on_another_text_is_refused(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    (tmp_path / "u.txt").write_text(words(300, seed=9))
    flags = ["--hidden", "8", "--layers", "1", "--seq-len", "8", "--batch-size", "8", "--max-steps", "3",
             "--device", "cpu", "--out", "r"]
    assert charrnn("train", "t.txt", *flags, cwd=tmp_path).returncode == 0
    r = charrnn("train", "u.txt", "--resume", "r", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 2 and b"--init-from" in r.stderr and b"Traceback" not in r.stderr


def test_init_from_fine_tunes_on_new_text_and_lists_unknown_characters(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    (tmp_path / "same_chars.txt").write_text(words(200, seed=5))
    (tmp_path / "new_chars.txt").write_text("The Cat sat on a Mat!\n" * 30)
    flags = ["--hidden", "8", "--layers", "1", "--seq-len", "8", "--batch-size", "8", "--device", "cpu"]
    assert charrnn("train", "t.txt", *flags, "--max-steps", "3", "--out", "base", cwd=tmp_path).returncode == 0
    r = charrnn("train", "same_chars.txt", "--init-from", "base", "--max-steps", "3", "--seq-len", "8",
                "--device", "cpu", "--out", "tuned", cwd=tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    tuned = ckpt.load(tmp_path / "tuned/last.safetensors")
    assert tuned.vocab == ckpt.load(tmp_path / "base/last.safetensors").vocab and tuned.progress["step"] == 3
    r = charrnn("train", "new_chars.txt", "--init-from", "base", "--device", "cpu", "--out", "x", cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 2 and "outside the checkpoint's vocabulary" in err
    assert all(repr(c) in err for c in "TCM!") and err.count("\n") == 1


# ---------------------------------------------------------------- signals
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_last_and_exits_quickly_leaving_no_temp_files(tmp_path, sig, code):
    (tmp_path / "t.txt").write_text(words(20000))
    p = subprocess.Popen([sys.executable, "-m", "charrnn", "train", "t.txt", "--hidden", "32", "--layers", "2",
                          "--seq-len", "16", "--batch-size", "8", "--val-every", "5", "--max-epochs", "100",
                          "--device", "cpu", "--out", "run"], cwd=tmp_path, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, p.stderr.read().decode()
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)        # a hang guard, not a timing claim (the machine is shared)
    assert p.returncode == code, err.decode()
    assert out == b"" and b"Traceback" not in err and b"interrupted at step" in err
    ck = ckpt.load(tmp_path / "run" / "last.safetensors")
    assert ck.metrics.get("interrupted") and ck.progress["step"] >= 10
    assert sorted(f.name for f in (tmp_path / "run").iterdir() if f.name.startswith(".")) == []


# ---------------------------------------------------------------- numerical faults
def test_a_nan_loss_rolls_back_halves_the_rate_and_goes_on(tmp_path, monkeypatch):
    t = Trainer(opts(max_steps=20, lr_plateau=1.0, lr_decay=1.0), TEXT, prepare_out_dir(tmp_path), show_progress=False)
    real, calls = t.be.train_step, {"n": 0}

    def sometimes_nan(*a):
        calls["n"] += 1
        loss, state = real(*a)
        return (float("nan") if calls["n"] == 13 else loss), state
    monkeypatch.setattr(t.be, "train_step", sometimes_nan)    # the rollback's new backend is clean
    res = t.run()
    assert res["steps"] == 20 and t.progress.nan_retries == 1 and t.lr == pytest.approx(opts().lr / 2)
    events = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rb = [e for e in events if e.get("event") == "rollback"]
    assert len(rb) == 1 and rb[0]["step"] == 13 and rb[0]["to_step"] == 10      # the last validation
    ck = ckpt.load(tmp_path / "last.safetensors")
    assert np.all(np.isfinite(ck.params.flat)) and ck.progress["nan_retries"] == 1


def test_a_nan_gradient_every_time_stops_after_k_rollbacks_naming_the_step(tmp_path, monkeypatch):
    t = Trainer(opts(max_steps=40, max_nan_retries=2), TEXT, prepare_out_dir(tmp_path), show_progress=False)
    import charrnn.train as tr

    def poison(be):
        real = be.optimizer_step

        def step(opt, lr, clip):
            if t.progress.step >= 6:
                be.grad.flat[0] = np.inf
            return real(opt, lr, clip)
        monkeypatch.setattr(be, "optimizer_step", step)
        return be
    poison(t.be)
    make = tr.make_backend
    monkeypatch.setattr(tr, "make_backend", lambda *a, **kw: poison(make(*a, **kw)))
    with pytest.raises(TrainingDiverged, match="the gradient is not finite at step 7 after 2 rollbacks"):
        t.run()
    ck = ckpt.load(tmp_path / "last.safetensors")          # written at step 5, still sound
    assert ck.progress["step"] == 5 and np.all(np.isfinite(ck.params.flat))


def test_an_exploding_run_through_the_cli_stops_with_a_message_and_no_bad_checkpoint(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    r = charrnn("train", "t.txt", "--hidden", "8", "--layers", "1", "--seq-len", "8", "--batch-size", "4",
                "--lr", "1e38", "--max-nan-retries", "2", "--device", "cpu", "--out", "run", cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode == 1 and "training diverged" in err and "at step" in err and "Traceback" not in err
    for f in (tmp_path / "run").glob("*.safetensors"):
        assert np.all(np.isfinite(ckpt.load(f).params.flat))


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    t = Trainer(opts(max_steps=1), TEXT, prepare_out_dir(tmp_path), show_progress=False)
    t.be.params_host().flat[3] = np.nan
    with pytest.raises(ckpt.CheckpointError, match="non-finite"):
        t.save("last")
    assert not list(tmp_path.glob("*.safetensors")) and not list(tmp_path.glob(".*"))


# ---------------------------------------------------------------- the run directory
def test_a_full_disk_fails_at_start_up(tmp_path, monkeypatch):
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", full)
        with pytest.raises(CorpusError, match="No space left on device"):
            prepare_out_dir(tmp_path / "run")
    assert not [f for f in (tmp_path / "run").iterdir()]         # the probe is gone too
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CorpusError, match="not enough space"):
        Trainer(opts(), TEXT, prepare_out_dir(tmp_path / "run"), show_progress=False)


# ---------------------------------------------------------------- large corpora
RSS_PROBE = """
import resource, subprocess, sys
p = subprocess.run(sys.argv[1:], capture_output=True)
sys.stderr.buffer.write(p.stderr)
print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def peak_rss(args, cwd) -> tuple[int, int]:
    r = subprocess.run([sys.executable, "-c", RSS_PROBE, sys.executable, "-m", "charrnn", *args],
                       capture_output=True, cwd=cwd, env=ENV, timeout=300)
    code, rss = r.stdout.split()
    assert int(code) == 0, r.stderr.decode()
    return int(rss)


def test_a_large_corpus_trains_with_memory_well_below_its_size(tmp_path):
    size = 48 << 20
    chunk = words(250_000).encode()
    with open(tmp_path / "big.txt", "wb") as f:
        for _ in range(size // len(chunk) + 1):
            f.write(chunk)
    (tmp_path / "small.txt").write_bytes(chunk[:20000])
    flags = ["--hidden", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "8", "--max-steps", "3",
             "--val-frac", "0", "--test-frac", "0", "--device", "cpu"]
    small = peak_rss(["train", "small.txt", *flags, "--out", "s"], tmp_path)
    big = peak_rss(["train", "big.txt", *flags, "--out", "b"], tmp_path)
    # the old path held bytes + str + UTF-32 + int64 indices: ~14 bytes per character
    assert big - small < size // 4, (small, big)
    assert sorted(f.name for f in (tmp_path / "b").iterdir() if f.name.startswith(".")) == []


def test_an_absurd_learning_rate_runs_or_diverges_but_is_never_an_internal_error(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT)
    r = charrnn("train", "t.txt", "--hidden", "8", "--layers", "1", "--seq-len", "8", "--batch-size", "4",
                "--max-steps", "3", "--lr", "1e30", "--device", "cpu", "--out", "run", cwd=tmp_path)
    err = r.stderr.decode()
    assert r.returncode in (0, 1) and "internal error" not in err and "Traceback" not in err, err
    assert "done:" in err or "training diverged" in err
