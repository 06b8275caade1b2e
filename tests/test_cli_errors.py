"""Bad input through the real entry point: every bad checkpoint, file, flag and pipe gets one
line on stderr and the right exit code, never a traceback. Most cases run main() in-process
(fast); a few run `python -m charrnn` to prove the real process behaves the same."""
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn import checkpoint as ckpt
from charrnn.corpus import Vocab
from charrnn.model import init_params
from tiny_models import run_main, tiny_config

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def one_line_error(code: int, err: str, want: int = 2) -> None:
    assert code == want, err
    assert err.strip() and err.strip().count("\n") == 0, err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("good")
    cfg = tiny_config(vocab_size=4, hidden=4, layers=1)
    c = ckpt.Checkpoint(config=cfg, vocab=Vocab("\nabc"), params=init_params(cfg, np.random.default_rng(0)),
                        train_args={"val_frac": 0.05, "test_frac": 0.05})
    ckpt.save(d / "good.safetensors", c)
    (d / "text.txt").write_text("abcabc\nabc\n" * 20)
    return d


def _parts(blob: bytes):
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _pack(header: dict, data: bytes, lie: int = 0) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) + lie) + h + data


def _bad_files(good: Path) -> dict[str, bytes]:
    blob = (good / "good.safetensors").read_bytes()
    header, data = _parts(blob)
    wrong_dtype = json.loads(json.dumps(header))
    wrong_dtype["out.b" if "out.b" in wrong_dtype else "param/out.b"]["dtype"] = "I64"
    wide = json.loads(json.dumps(header))
    wide["param/out.b"]["data_offsets"][1] += 10 ** 6
    gru = json.loads(json.dumps(header))
    cfg = json.loads(gru["__metadata__"]["config"])
    gru["__metadata__"]["config"] = json.dumps({**cfg, "cell": "gru"})
    hidden = json.loads(json.dumps(header))
    hidden["__metadata__"]["config"] = json.dumps({**cfg, "hidden": 10 ** 9, "layers": 1})
    nan = bytearray(blob)
    nan[len(blob) - 4:] = struct.pack("<f", float("nan"))
    flipped = bytearray(blob)
    flipped[8 + 20] ^= 0x40                          # a bit in the JSON header
    version = json.loads(json.dumps(header))
    version["__metadata__"]["version"] = "7"
    return {
        "truncated": blob[:len(blob) // 2],
        "bit_flipped": bytes(flipped),
        "nan_weight": bytes(nan),
        "wrong_dtype": _pack(wrong_dtype, data),
        "oversized_header": struct.pack("<Q", 1 << 62) + blob[8:],
        "lying_header_length": _pack(header, data, lie=5),
        "lying_offsets": _pack(wide, data),
        "wrong_architecture": _pack(gru, data),
        "huge_config": _pack(hidden, data),
        "newer_version": _pack(version, data),
        "not_a_checkpoint": b"ROMEO: but soft, what light\n" * 10,
        "empty": b"",
        "png": b"\x89PNG\r\n\x1a\n" + bytes(200),
    }


CASES = ["truncated", "bit_flipped", "nan_weight", "wrong_dtype", "oversized_header", "lying_header_length",
         "lying_offsets", "wrong_architecture", "huge_config", "newer_version", "not_a_checkpoint", "empty", "png"]


@pytest.mark.parametrize("case", CASES)
def test_a_bad_checkpoint_is_one_line_exit_2_for_sample_and_eval(good, tmp_path, case, monkeypatch, capsys):
    bad = tmp_path / f"{case}.safetensors"
    bad.write_bytes(_bad_files(good)[case])
    code, out, err = run_main(["sample", str(bad), "--length", "5"], monkeypatch, capsys)
    one_line_error(code, err)
    assert out == "" and str(bad) in err or case == "huge_config"
    code, out, err = run_main(["eval", str(bad), str(good / "text.txt")], monkeypatch, capsys)
    one_line_error(code, err)
    assert out == ""


def test_the_good_checkpoint_itself_works(good, monkeypatch, capsys):
    code, out, err = run_main(["eval", str(good / "good.safetensors"), str(good / "text.txt"), "--json"],
                             monkeypatch, capsys)
    assert code == 0 and "bits_per_char" in json.loads(out)


def test_the_real_process_refuses_bad_checkpoints_without_a_traceback(good, tmp_path):
    files = _bad_files(good)
    for case in ("truncated", "lying_offsets", "not_a_checkpoint"):
        (tmp_path / f"{case}.safetensors").write_bytes(files[case])
        for cmd in (["sample", f"{case}.safetensors"], ["eval", f"{case}.safetensors", str(good / "text.txt")]):
            r = subprocess.run([sys.executable, "-m", "charrnn", *cmd], capture_output=True, cwd=tmp_path, env=ENV,
                               timeout=120)
            one_line_error(r.returncode, r.stderr.decode())
            assert r.stdout == b""


def test_a_directory_or_missing_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    one_line_error(*run_main(["sample", str(tmp_path)], monkeypatch, capsys)[::2])
    one_line_error(*run_main(["sample", str(tmp_path / "nope.safetensors")], monkeypatch, capsys)[::2])
    one_line_error(*run_main(["train", "x.txt", "--resume", str(tmp_path / "nope")], monkeypatch, capsys)[::2])


# ---------------------------------------------------------------- bad input files
def _text_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bom_only.txt").write_bytes("\ufeff".encode())
    (tmp_path / "one.txt").write_text("a")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 3)
    (tmp_path / "adir").mkdir()
    return {
        "missing": (str(tmp_path / "nope.txt"), "no such file"),
        "directory": (str(tmp_path / "adir"), "is a directory"),
        "empty": (str(tmp_path / "empty.txt"), "is empty"),
        "only_a_bom": (str(tmp_path / "bom_only.txt"), "is empty"),
        "invalid_utf8": (str(tmp_path / "latin1.txt"), "bad byte 0xe9 at offset 3; use --bytes"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "only_a_bom", "invalid_utf8"])
def test_a_bad_training_file_is_one_line_and_makes_no_run_directory(tmp_path, case, monkeypatch, capsys):
    path, msg = _text_cases(tmp_path)[case]
    if case == "directory":           # a folder is a set of documents to train: this one has none
        msg = "holds no files to read"
    code, out, err = run_main(["train", path, "--out", str(tmp_path / "run"), "--device", "cpu"], monkeypatch, capsys)
    one_line_error(code, err)
    assert msg in err and out == ""
    assert not (tmp_path / "run").exists() or case in ("invalid_utf8", "only_a_bom")   # found while decoding


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "invalid_utf8"])
def test_a_bad_evaluation_file_is_one_line(good, tmp_path, case, monkeypatch, capsys):
    path, msg = _text_cases(tmp_path)[case]
    code, out, err = run_main(["eval", str(good / "good.safetensors"), path], monkeypatch, capsys)
    one_line_error(code, err)
    assert msg.split(";")[0] in err


def test_invalid_utf8_suggests_bytes_and_encoding_and_encoding_fixes_it(tmp_path, monkeypatch, capsys):
    path, _ = _text_cases(tmp_path)["invalid_utf8"]
    code, _, err = run_main(["train", path, "--out", str(tmp_path / "r"), "--device", "cpu"], monkeypatch, capsys)
    assert code == 2 and "offset 3" in err and "--bytes" in err and "--encoding" in err
    code, _, err = run_main(["train", path, "--encoding", "latin-1", "--out", str(tmp_path / "r"), "--hidden", "4",
                            "--layers", "1", "--seq-len", "4", "--batch-size", "2", "--max-steps", "2",
                            "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = run_main(["train", path, "--encoding", "klingon", "--out", str(tmp_path / "r"), "--device", "cpu"],
                           monkeypatch, capsys)
    one_line_error(code, err)
    assert "unknown encoding" in err


def test_a_text_too_short_for_one_window_is_an_error_and_a_short_one_shrinks_with_a_warning(
        tmp_path, monkeypatch, capsys):
    path = tmp_path / "one.txt"
    path.write_text("a")
    code, _, err = run_main(["train", str(path), "--out", str(tmp_path / "r"), "--device", "cpu"], monkeypatch, capsys)
    one_line_error(code, err)
    assert "too short" in err
    path.write_text("abcdefghij" * 3)
    code, _, err = run_main(["train", str(path), "--out", str(tmp_path / "r"), "--hidden", "4", "--layers", "1",
                            "--max-steps", "1", "--device", "cpu"], monkeypatch, capsys)
    assert code == 0 and "using batch 1, sequence length" in err


def test_stdin_needs_a_run_name_and_empty_stdin_is_one_line(tmp_path, monkeypatch, capsys):
    one_line_error(*run_main(["train", "-"], monkeypatch, capsys, stdin=b"abc")[::2])
    code, _, err = run_main(["train", "-", "--out", str(tmp_path / "r"), "--device", "cpu"], monkeypatch, capsys,
                           stdin=b"")
    one_line_error(code, err)
    assert "stdin is empty" in err


def test_resume_and_init_from_together_are_refused(good, tmp_path, monkeypatch, capsys):
    g = str(good / "good.safetensors")
    code, _, err = run_main(["train", str(good / "text.txt"), "--resume", g, "--init-from", g, "--out",
                            str(tmp_path / "r")], monkeypatch, capsys)
    one_line_error(code, err)
    assert "not both" in err


def test_an_unwritable_out_dir_is_one_line_at_start_up(good, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    for out in (str(tmp_path / "file" / "run"), "/proc/charrnn-run"):
        code, _, err = run_main(["train", str(good / "text.txt"), "--out", out, "--device", "cpu"], monkeypatch, capsys)
        one_line_error(code, err)
        assert "cannot write checkpoints" in err


# ---------------------------------------------------------------- nonsense numbers
@pytest.mark.parametrize("args", [
    ["train", "x.txt", "--hidden", "-3"], ["train", "x.txt", "--hidden", "0"], ["train", "x.txt", "--layers", "0"],
    ["train", "x.txt", "--seq-len", "-1"], ["train", "x.txt", "--batch-size", "0"],
    ["train", "x.txt", "--dropout", "1.5"], ["train", "x.txt", "--dropout", "1"], ["train", "x.txt", "--lr", "-1"],
    ["train", "x.txt", "--lr", "0"], ["train", "x.txt", "--val-frac", "1.2"], ["train", "x.txt", "--test-frac", "-0.1"],
    ["train", "x.txt", "--beta1", "1.5"], ["train", "x.txt", "--max-epochs", "-2"], ["train", "x.txt", "--minutes", "-1"],
    ["train", "x.txt", "--max-nan-retries", "-1"], ["train", "x.txt", "--hidden", "lots"],
    ["train", "x.txt", "--average", "sma"], ["train", "x.txt", "--average-decay", "1"],
    ["sample", "--temp", "-0.5"], ["sample", "--top-p", "1.5"], ["sample", "--top-p", "0"], ["sample", "--top-k", "-1"],
    ["sample", "--length", "-5"], ["eval", "--split", "train"],
])
def test_nonsense_numbers_are_one_line_naming_the_option(args, monkeypatch, capsys):
    code, out, err = run_main(args, monkeypatch, capsys)
    one_line_error(code, err)
    assert out == "" and err.startswith(f"charrnn: error: {args[-2]}: "), err
    assert re.search(r"is not a valid|not in the range|is not one of", err), err


# ---------------------------------------------------------------- pipes
@pytest.mark.parametrize("reader", ["head -c 1", "true"])
def test_eval_json_into_a_closed_pipe_ends_quietly_with_exit_0(good, reader):
    cmd = (f"set -o pipefail; {sys.executable} -m charrnn eval {good / 'good.safetensors'} {good / 'text.txt'} "
           f"--json | {reader} >/dev/null")
    p = subprocess.run(cmd, shell=True, executable="/bin/bash", capture_output=True, env=ENV, timeout=120)
    assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()


@pytest.mark.parametrize("reader", ["head -1", "true"])
def test_corpus_list_into_a_closed_pipe_ends_quietly_with_exit_0(reader):
    cmd = f"set -o pipefail; {sys.executable} -m charrnn corpus list | {reader} >/dev/null"
    p = subprocess.run(cmd, shell=True, executable="/bin/bash", capture_output=True, env=ENV, timeout=120)
    assert p.returncode == 0 and p.stderr == b"", p.stderr.decode()


# ---------------------------------------------------------------- nothing executes
def test_no_pickle_anywhere_in_the_code_base():
    unsafe = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|shelve|marshal|joblib)\b"
                        r"|allow_pickle\s*=\s*True|\bpickle\.loads?\(|\btorch\.load\(|\bnp\.load\(", re.M)
    hits = []
    for folder in ("charrnn", "bench", "tests"):
        for f in (ROOT / folder).rglob("*.py"):
            if f.name != Path(__file__).name and unsafe.search(f.read_text(encoding="utf-8", errors="replace")):
                hits.append(str(f.relative_to(ROOT)))
    assert hits == []


def test_train_from_stdin_needs_an_out_or_a_name(monkeypatch, capsys):
    code, out, err = run_main(["train", "-"], monkeypatch, capsys, stdin=b"some text\n")
    one_line_error(code, err)
    assert "--out" in err and "--name" in err


# ---------------------------------------------------------------- issue 27's examples: each one line, exit 2
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained run (a full checkpoint: it can be resumed) and its text."""
    from tiny_models import train
    d = tmp_path_factory.mktemp("run")
    (d / "t.txt").write_text("abcabc\nabd\n" * 60)
    return train(d / "t.txt", d / "run", steps=3)


@pytest.mark.parametrize("extra,why", [
    (["--eps", "nan"], "--eps: 'nan' is not a finite number"),
    (["--weight-decay", "nan"], "--weight-decay: 'nan' is not a finite number"),
    (["--forget-bias", "inf"], "--forget-bias: 'inf' is not a finite number"),
    (["--lr", "inf"], "--lr: 'inf' is not a finite number"), (["--lr", "1e39"], "--lr: 1e+39 is out of range"),
    (["--hidden", "10000000000"], "--hidden 10000000000, --layers 1"),
    (["--layers", "100000"], "--layers: 100000 is not in the range"),
    (["--clip", "norm:abc"], "--clip: must be norm:X, value:X or none, not 'norm:abc'"),
    (["--max-epochs", "1e300"], "--max-epochs: 1e+300 is out of range"), (["--seed", "-1"], "--seed: -1 is not"),
    (["--encoding", "klingon"], "--encoding: unknown encoding"),
    (["--cell", "gru", "--norm", "layer"], "layer normalisation is implemented for the LSTM cell only, not the GRU"),
    (["--norm", "none", "--recurrent-dropout", "0.2"], "recurrent dropout is implemented for the layer-normalised"),
    (["--recurrent-dropout", "1"], "--recurrent-dropout: 1.0 is not in the range 0<=x<1"),
])
def test_bad_training_values_are_one_line_before_anything_is_written(good, tmp_path, extra, why, monkeypatch,
                                                                      capsys):
    args = ["train", str(good / "text.txt"), "--hidden", "4", "--layers", "1", "--max-steps", "1", "--device", "cpu",
            "--out", str(tmp_path / "run"), *extra]
    code, out, err = run_main(args, monkeypatch, capsys)
    one_line_error(code, err)
    assert why in err and out == ""
    assert not (tmp_path / "run").exists()


def test_a_model_that_cannot_fit_says_so_with_the_estimate(good, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(["train", str(good / "text.txt"), "--hidden", "10000000000", "--layers", "1",
                             "--device", "cpu", "--out", str(tmp_path / "r")], monkeypatch, capsys)
    one_line_error(code, err)
    assert re.search(r"need about [\d.]+ TB of memory and [\d.]+ [kMGT]?B is available", err), err
    code, _, err = run_main(["lr-find", str(good / "text.txt"), "--hidden", "10000000000", "--device", "cpu"],
                            monkeypatch, capsys)
    one_line_error(code, err)
    assert "of memory" in err


@pytest.mark.parametrize("extra,why", [
    (["--temp", "nan"], "--temp: 'nan' is not a finite number"), (["--temp", "inf"], "--temp: 'inf'"),
    (["--temp", "1e-300"], "--temp: 1e-300 is too small"), (["--top-p", "nan"], "--top-p: 'nan' is not a finite"),
    (["--seed", "-1"], "--seed: -1 is not in the range"), (["--num-samples", "100000000000"], "of memory"),
])
def test_bad_sampling_values_are_one_line(good, extra, why, monkeypatch, capsys):
    code, out, err = run_main(["sample", str(good / "good.safetensors"), "-n", "5", *extra], monkeypatch, capsys)
    one_line_error(code, err)
    assert why in err and out == ""


def test_sample_with_stdout_closed_is_one_line_not_a_crash(good):
    r = subprocess.run(f"{sys.executable} -m charrnn sample {good / 'good.safetensors'} -n 5 >&-", shell=True,
                       capture_output=True, env=ENV, timeout=120)
    one_line_error(r.returncode, r.stderr.decode())
    assert "stdout is closed" in r.stderr.decode()


def test_a_bad_prime_file_names_no_option_sample_lacks(good, tmp_path, monkeypatch, capsys):
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    code, _, err = run_main(["sample", str(good / "good.safetensors"), "--prime-file", str(tmp_path / "latin.txt")],
                            monkeypatch, capsys)
    one_line_error(code, err)
    assert "offset 3" in err and "--encoding" not in err and "use --bytes" not in err


@pytest.mark.parametrize("args,why", [
    (["sample", "--bogus"], "no such option '--bogus' (see charrnn sample --help)"),
    (["train"], "missing argument 'PATH...' (see charrnn train --help)"),
    (["--bogus"], "no such option '--bogus' (see charrnn --help)"),
    (["nocmd"], "no such command 'nocmd'"), (["train", "x.txt", "--hidden", "x"], "--hidden: 'x' is not a valid"),
    (["eval", "--split", "train"], "--split: 'train' is not one of"),
    (["sample", "--prime", "a", "--prime-file", "b"], "give --prime or --prime-file, not both"),
    (["zoo", "nope"], "no such command 'nope' (see charrnn zoo --help)"),
])
def test_clicks_usage_errors_are_one_line_and_help_is_kept(args, why, monkeypatch, capsys):
    code, out, err = run_main(args, monkeypatch, capsys)
    one_line_error(code, err)
    assert err == f"charrnn: error: {why}\n" or why in err
    command = [a for a in args[:1] if a in ("sample", "train", "eval", "zoo")]
    code, out, err = run_main([*command, "--help"], monkeypatch, capsys)
    assert code == 0 and out.startswith("Usage: charrnn") and "Options:" in out


def test_shape_flags_that_disagree_with_the_checkpoint_are_refused(run_dir, tmp_path, monkeypatch, capsys):
    text = str(run_dir.parent / "t.txt")
    for extra, why in ((["--resume", str(run_dir), "--hidden", "64"], "--hidden 64 disagrees with the checkpoint's 16"),
                       (["--resume", str(run_dir), "--cell", "gru"], "--cell gru disagrees with the checkpoint's lstm"),
                       (["--init-from", str(run_dir), "--hidden", "64", "--out", str(tmp_path / "ft")],
                        "--hidden 64 disagrees"),
                       (["--init-from", str(run_dir), "--bytes", "--out", str(tmp_path / "ft")], "text model")):
        code, _, err = run_main(["train", text, "--device", "cpu", *extra], monkeypatch, capsys)
        one_line_error(code, err)
        assert why in err
    assert not (tmp_path / "ft").exists()
    # agreeing shape flags are fine; --dropout takes effect and says so
    code, _, err = run_main(["train", text, "--device", "cpu", "--init-from", str(run_dir), "--hidden", "16",
                             "--dropout", "0.3", "--max-steps", "1", "--out", str(tmp_path / "ok")],
                            monkeypatch, capsys)
    assert code == 0 and "--dropout 0.3 replaces the checkpoint's 0" in err
    assert ckpt.load(tmp_path / "ok" / "last.safetensors").config.dropout == 0.3


def test_a_weights_only_file_is_refused_by_resume_with_a_pointer_to_init_from(good, tmp_path, monkeypatch, capsys):
    w = str(good / "good.safetensors")        # weights, config and vocabulary only
    code, _, err = run_main(["train", str(good / "text.txt"), "--resume", w, "--out", str(tmp_path / "r"),
                             "--device", "cpu"], monkeypatch, capsys)
    one_line_error(code, err)
    assert "weights-only" in err and f"--init-from {w}" in err


def test_init_from_a_byte_model_keeps_a_text_run_text_or_refuses(tmp_path, monkeypatch, capsys):
    from tiny_models import train
    (tmp_path / "b.bin").write_bytes(bytes(range(256)) * 4)
    byte_run = train(tmp_path / "b.bin", tmp_path / "bytes", "--bytes", steps=2)
    (tmp_path / "t.txt").write_text("abc\n" * 100)
    code, _, err = run_main(["train", str(tmp_path / "t.txt"), "--init-from", str(byte_run), "--device", "cpu",
                             "--out", str(tmp_path / "x")], monkeypatch, capsys)
    one_line_error(code, err)
    assert "byte model" in err and "give --bytes" in err
    code, _, err = run_main(["train", str(tmp_path / "t.txt"), "--init-from", str(byte_run), "--bytes", "--device",
                             "cpu", "--max-steps", "1", "--out", str(tmp_path / "x")], monkeypatch, capsys)
    assert code == 0, err


@pytest.mark.parametrize("args", [
    ["eval", "{ck}", "{text}", "--weights", "bf16", "--dynamic"],
    ["sample", "{ck}", "--weights", "f16", "--adapt", "{text}"],
    ["sample", "{gru}", "--weights", "bf16", "-n", "5"],
    ["eval", "{ln}", "{text}", "--weights", "bf16"],
    ["eval", "{ck}", "{text}", "--weights", "f8"],
])
def test_16_bit_weights_with_adapting_weights_a_gru_or_an_unknown_format_are_one_line(good, args, monkeypatch,
                                                                                     capsys):
    """Also a layer-normalised LSTM, which the 16-bit kernels do not have."""
    for name, cfg in (("gru", tiny_config(vocab_size=4, hidden=4, layers=1, cell="gru")),
                      ("ln", tiny_config(vocab_size=4, hidden=4, layers=1, norm="layer"))):
        ckpt.save(good / f"{name}.safetensors", ckpt.Checkpoint(config=cfg, vocab=Vocab("\nabc"),
                                                               params=init_params(cfg, np.random.default_rng(0))))
    where = {"ck": good / "good.safetensors", "text": good / "text.txt", "gru": good / "gru.safetensors",
             "ln": good / "ln.safetensors"}
    code, out, err = run_main([a.format(**where) for a in args], monkeypatch, capsys)
    one_line_error(code, err)
    assert out == "" and "--weights" in err, err
