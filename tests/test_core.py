"""The train/sample/eval commands end to end on a tiny model (the corpus, batches and checkpoints
have their own files: tests/test_corpus.py, test_batches.py, test_checkpoint.py)."""
import json
from collections import Counter
import os
import subprocess
import sys

import numpy as np
import pytest


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(*args, input=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "charrnn", *args], input=input, capture_output=True,
                          cwd=cwd, env=ENV, timeout=300)


# ---------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    words = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so "]
    r = np.random.default_rng(0)
    (d / "words.txt").write_text("".join(words[i] for i in r.integers(0, 10, 3000)), encoding="utf-8")
    res = run("train", "words.txt", "--hidden", "16", "--layers", "1", "--seq-len", "20", "--batch-size", "8",
              "--max-epochs", "3", "--lr", "0.02", "--device", "cpu", cwd=d)
    assert res.returncode == 0, res.stderr.decode()
    return d, res


def test_train_writes_best_last_and_metrics_and_keeps_stdout_empty(trained):
    d, res = trained
    run_dir = d / "checkpoints" / "words"
    assert (run_dir / "best.safetensors").is_file() and (run_dir / "last.safetensors").is_file()
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["event"] == "stop" and lines[-1]["reason"]
    lines = [l for l in lines if "diag" not in l or "val_bpc" in l][:-1]
    assert lines and all("val_bpc" in l for l in lines)
    # a unigram model (the characters' own frequencies, 3.61 bits) knows nothing of the words
    text = (d / "words.txt").read_text(encoding="utf-8")
    freq = np.array(list(Counter(text).values())) / len(text)
    unigram = float(-(freq * np.log2(freq)).sum())
    assert lines[-1]["val_bpc"] < unigram - 0.5
    assert res.stdout == b""


def test_same_seed_gives_same_text(trained):
    d, _ = trained
    a = run("sample", "--seed", "7", "--length", "300", cwd=d)
    b = run("sample", "--seed", "7", "--length", "300", cwd=d)
    c = run("sample", "--seed", "8", "--length", "300", cwd=d)
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout != c.stdout
    assert len(a.stdout.decode()) >= 300


def test_sample_into_a_closed_pipe_exits_quietly(trained):
    d, _ = trained
    p = subprocess.run(f"{sys.executable} -m charrnn sample --length 100000 | head -c 100",
                       shell=True, capture_output=True, cwd=d, env=ENV, timeout=120,
                       executable="/bin/bash")
    assert len(p.stdout) == 100
    assert p.stderr == b"" or p.stderr.startswith(b"compiling kernels")
    p = subprocess.run(f"set -o pipefail; {sys.executable} -m charrnn sample --length 100000 | head -c 100 >/dev/null",
                       shell=True, capture_output=True, cwd=d, env=ENV, timeout=120, executable="/bin/bash")
    assert p.returncode == 0


def test_eval_json_prints_one_object_with_bits_per_char(trained):
    d, _ = trained
    res = run("eval", "--split", "test", "--json", cwd=d)
    assert res.returncode == 0, res.stderr.decode()
    out = json.loads(res.stdout)                        # exactly one JSON document
    assert set(out) >= {"bits_per_char", "nats_per_char", "perplexity", "chars"}
    assert abs(out["bits_per_char"] - out["nats_per_char"] / np.log(2)) < 1e-9
    text = run("eval", "checkpoints/words", "words.txt", cwd=d)
    assert text.returncode == 0 and b"bits/char" in text.stdout


def test_eval_skips_and_reports_unknown_characters(trained):
    d, _ = trained
    (d / "odd.txt").write_text("the cat sat on the mat. Zebra!!\n", encoding="utf-8")
    res = run("eval", "checkpoints/words", "odd.txt", "--json", cwd=d)
    assert res.returncode == 0
    assert b"outside the vocabulary" in res.stderr and json.loads(res.stdout)["skipped_chars"] == 4


def test_missing_file_is_one_line_error_exit_2(tmp_path):
    res = run("train", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert res.stderr.decode().strip().count("\n") == 0 and b"Traceback" not in res.stderr
