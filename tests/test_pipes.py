"""charrnn as a Unix filter, in real processes: pipes both ways, stdin, signals, environment
variables and exit codes. The models are built in this process first, which also fills Numba's
on-disk cache, so the child processes load kernels instead of compiling them."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn.cli import cli
from tiny_models import (BYTE_VALUES, CHI2_999, UNICODE_PRIME, WORDS, chi_square, known_model,
                             skewed_bytes, total_variation, train, word_text)

CHARRNN = f"{shlex.quote(sys.executable)} -m charrnn"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A working directory with checkpoints/uni (the newest best, found with no argument)."""
    d = tmp_path_factory.mktemp("pipes")
    (d / "uni.txt").write_text(word_text(WORDS, 2000), encoding="utf-8")
    (d / "held.txt").write_text(word_text(WORDS, 300, seed=1), encoding="utf-8")
    (d / "bin.dat").write_bytes(skewed_bytes(6000))
    known_model(d / "known.safetensors", "abcdef", [0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    train(d / "uni.txt", d / "checkpoints" / "uni")
    # a child process fills or refreshes the kernel cache, so later children have nothing to compile
    assert sh(f"{CHARRNN} sample -n 1 >/dev/null 2>&1", d).returncode == 0
    return d


def sh(script: str, cwd, input: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a bash pipeline with pipefail, so a failing charrnn fails the line."""
    return subprocess.run(["bash", "-c", "set -o pipefail; " + script], cwd=cwd, input=input,
                          capture_output=True, timeout=120, env={**os.environ, **(env or {})})


def in_process(*args) -> bytes:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout_bytes


def test_sample_into_head_exits_0_with_empty_stderr(home):
    p = sh(f"{CHARRNN} sample --length 0 2>err.txt | head -c 50", home)
    assert p.returncode == 0 and len(p.stdout) == 50
    assert (home / "err.txt").read_bytes() == b""


def test_prime_from_a_pipe_is_echoed_and_continued(home):
    p = sh(f"printf 'To be' | {CHARRNN} sample --prime - -n 30 --seed 1", home)
    assert p.returncode == 0 and p.stderr == b""
    assert p.stdout.startswith(b"To be") and len(p.stdout.decode()) == 5 + 30 + 1


def test_the_same_seed_gives_the_same_text_in_another_process(home):
    p = sh(f"{CHARRNN} sample -n 300 --seed 7", home)
    assert p.returncode == 0
    assert p.stdout == in_process("sample", home / "checkpoints" / "uni", "-n", 300, "--seed", 7)
    assert p.stdout != in_process("sample", home / "checkpoints" / "uni", "-n", 300, "--seed", 8)


def test_top_k_one_gives_the_same_text_as_temp_zero(home):
    p = sh(f"{CHARRNN} sample -n 100 --top-k 1 --seed 1 > k1.txt && {CHARRNN} sample -n 100 --temp 0 --seed 2 > t0.txt",
           home)
    assert p.returncode == 0
    assert (home / "k1.txt").read_bytes() == (home / "t0.txt").read_bytes()


def test_top_p_one_samples_the_full_distribution(home):
    p = sh(f"{CHARRNN} sample known.safetensors -N 3000 -n 1 --json --top-p 1.0 --prime ab --seed 11", home)
    assert p.returncode == 0
    texts = [json.loads(line)["text"] for line in p.stdout.decode().splitlines()]
    counts = np.array([texts.count(c) for c in "abcdef"])
    # the model's distribution after "ab", computed in this process
    from charrnn import checkpoint as ckpt
    from charrnn.backends.cpu import CpuBackend
    from charrnn.sample import prime_state
    ck = ckpt.load(home / "known.safetensors")
    be = CpuBackend(ck.config, ck.params)
    state, last = prime_state(be, ck.vocab.encode("ab").astype(np.int64), 1)
    z = be.step(last, state)[0][0].astype(np.float64)
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert (counts > 0).all() and chi_square(counts, probs) < CHI2_999[5]


def test_unicode_prime_round_trips_through_the_pipe(home):
    p = sh(f"{CHARRNN} sample --prime {shlex.quote(UNICODE_PRIME)} -n 20 --seed 3", home)
    assert p.returncode == 0 and p.stderr == b""
    assert p.stdout.decode("utf-8").startswith(UNICODE_PRIME)


def test_unicode_prime_outside_the_vocabulary_is_a_one_line_error_exit_2(home):
    p = sh(f"{CHARRNN} sample known.safetensors --prime {shlex.quote(UNICODE_PRIME)}", home)
    err = p.stderr.decode("utf-8").strip()
    assert p.returncode == 2 and p.stdout == b""
    assert "\n" not in err and "'Ç'" in err and "Traceback" not in err


def test_byte_model_reproduces_the_byte_statistics_of_a_binary_file(home):
    p = sh(f"{CHARRNN} train --bytes bin.dat --out binrun --hidden 16 --layers 1 --seq-len 16 --batch-size 8 "
           f"--max-steps 120 --lr 0.03 --dropout 0 --device cpu 2>/dev/null "
           f"&& {CHARRNN} sample binrun -n 5000 --seed 1 > out.bin", home)
    assert p.returncode == 0, p.stderr
    src = np.frombuffer((home / "bin.dat").read_bytes(), np.uint8)
    out = np.frombuffer((home / "out.bin").read_bytes(), np.uint8)
    assert len(out) == 5000
    assert np.isin(out, np.frombuffer(BYTE_VALUES, np.uint8)).mean() > 0.9
    assert total_variation(np.bincount(src, minlength=256), np.bincount(out, minlength=256)) < 0.15
    # the file holds exactly the generated bytes: the same as the JSON's base64 for that seed
    import base64
    rec = json.loads(in_process("sample", home / "binrun", "-n", 5000, "--seed", 1, "--json"))
    assert base64.b64decode(rec["bytes_b64"]) == out.tobytes()


def test_train_reads_stdin_and_eval_reads_stdin(home):
    p = sh(f"cat uni.txt held.txt | {CHARRNN} train - --out stdinrun --hidden 8 --layers 1 --max-steps 10 "
           f"--seq-len 16 --batch-size 4 --device cpu", home)
    assert p.returncode == 0 and p.stdout == b"" and (home / "stdinrun" / "best.safetensors").is_file()
    p = sh(f"{CHARRNN} eval stdinrun - --json < held.txt", home)
    assert p.returncode == 0
    from_stdin = json.loads(p.stdout)
    from_file = json.loads(in_process("eval", home / "stdinrun", home / "held.txt", "--json"))
    assert from_stdin["bits_per_char"] == pytest.approx(from_file["bits_per_char"], rel=1e-6)


def test_train_from_stdin_without_a_run_name_is_exit_2(home):
    p = sh(f"printf 'abc' | {CHARRNN} train -", home)
    assert p.returncode == 2 and len(p.stderr.decode().strip().splitlines()) == 1


def test_options_come_from_charrnn_environment_variables(home):
    p = sh(f"{CHARRNN} sample --seed 1", home, env={"CHARRNN_SAMPLE_LENGTH": "7", "CHARRNN_SAMPLE_PRIME": "To",
                                                     "CHARRNN_SAMPLE_ECHO": "0"})
    assert p.returncode == 0 and len(p.stdout.decode()) == 8


def test_ctrl_c_ends_endless_output_quietly_with_130(home):
    # Ctrl-C at a terminal: SIGINT at its default disposition in the child, even where this test
    # runs with SIGINT ignored (a job started with & in a script inherits SIG_IGN, and Python then
    # installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", "sample", "-n", "0"], cwd=home,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert len(proc.stdout.read(20)) == 20                  # it is streaming
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and err == b""


def test_exit_codes_are_0_for_version_2_for_usage_and_1_for_a_failed_write(home):
    assert sh(f"{CHARRNN} --version", home).returncode == 0
    bad = sh(f"{CHARRNN} sample --no-such-option", home)
    assert bad.returncode == 2 and b"Traceback" not in bad.stderr
    full = sh(f"{CHARRNN} sample -n 100000 > /dev/full", home)
    assert full.returncode == 1 and len(full.stderr.decode().strip().splitlines()) == 1
