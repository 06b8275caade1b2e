"""The first minute (issue 28) and `charrnn warm` (charrnn/warm.py), in real processes with
their own empty Numba cache: a cold `charrnn sample` streams, says once that it compiles, and
writes the same seeded text as a warm one; `charrnn warm` fills the cache the sample then loads.
No time is asserted (bench/cold_start.py measures it)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from charrnn.cli import cli

SAMPLE = [sys.executable, "-m", "charrnn", "sample", "shakespeare", "--length", "2000", "--seed", "7"]


def _env(tmp, cache) -> dict:
    """A fresh user's environment: Numba's cache in `cache` (empty at first), no corpora."""
    env = {k: v for k, v in os.environ.items() if k not in ("CHARRNN_CORPORA", "NUMBA_CACHE_DIR")}
    return {**env, "NUMBA_CACHE_DIR": str(cache), "CHARRNN_CACHE": str(tmp / "corpora"), "PYTHONUNBUFFERED": "1"}


def _sample(env, cwd) -> tuple[bytes, bytes, bytes]:
    """(the first byte, as soon as it is written; all of stdout; stderr) of a seeded sample."""
    # unbuffered: a buffered read(1) would keep bytes that communicate() then never sees
    p = subprocess.Popen(SAMPLE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd, bufsize=0)
    try:
        first = p.stdout.read(1)
        out, err = p.communicate(timeout=300)
    finally:
        p.kill()
    assert p.returncode == 0, err.decode()
    return first, first + out, err


@pytest.fixture(scope="module")
def cold_then_warm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cold")
    env = _env(tmp, tmp / "numba")
    return _sample(env, tmp), _sample(env, tmp)


def test_a_cold_sample_prints_its_first_character_and_one_compiling_line(cold_then_warm):
    (first, text, err), _ = cold_then_warm
    assert first and text.startswith(first) and len(text) == 2001           # 2000 characters and a newline
    lines = err.decode().splitlines()
    # nothing but one line saying that it compiles, with the time it expects
    assert len(lines) <= 1 and all(ln.startswith("compiling kernels") and "(about " in ln for ln in lines), lines


def test_a_seeded_sample_writes_the_same_2000_characters_cold_and_warm(cold_then_warm):
    (_, cold, _), (_, warm, warm_err) = cold_then_warm
    assert cold == warm
    assert b"compiling" not in warm_err                 # the warm run loaded every kernel from the cache


def test_warm_rejects_an_unknown_cell_with_a_usage_error():
    res = CliRunner().invoke(cli, ["warm", "--cell", "lstn"])
    assert res.exit_code == 2 and "lstn" in res.output


@pytest.mark.slow
def test_after_warm_a_fresh_sample_and_training_step_compile_nothing(tmp_path):
    env = _env(tmp_path, tmp_path / "numba")
    w = subprocess.run([sys.executable, "-m", "charrnn", "warm"], capture_output=True, env=env, cwd=tmp_path,
                       timeout=600)
    assert w.returncode == 0 and b"lstm: kernels ready" in w.stderr, w.stderr.decode()
    cached = sorted(p.name for p in (tmp_path / "numba").rglob("*"))
    _, text, err = _sample(env, tmp_path)
    assert len(text) == 2001 and b"compiling" not in err
    text_path = tmp_path / "t.txt"
    text_path.write_text("the cat sat on the mat.\n" * 400, encoding="utf-8")
    t = subprocess.run([sys.executable, "-m", "charrnn", "train", str(text_path), "--out", str(tmp_path / "run"),
                        "--max-steps", "1", "--val-every", "1"], capture_output=True, env=env, cwd=tmp_path,
                       timeout=600)
    assert t.returncode == 0 and b"compiling" not in t.stderr, t.stderr.decode()
    assert sorted(p.name for p in (tmp_path / "numba").rglob("*")) == cached     # a compile writes its cache
