"""Sampling: the decoding rules, seeds, batches, stop strings, primes, JSON lines and the CLI's
conventions, through the library and Click's CliRunner (test_pipes.py runs real processes)."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn import checkpoint as ckpt
from charrnn.backends.cpu import CpuBackend
from charrnn.cli import cli
from charrnn.evaluate import evaluate
from charrnn.sample import Decoding, distribution, prime_codes, prime_state, stream
from tiny_models import (tiny_config, BYTE_VALUES, CHI2_999, UNICODE_PRIME, WORDS, RefStep, chi_square, count_calls,
                             known_model, skewed_bytes, train, word_text)

CHARS = "abcdef"
PROBS = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    (d / "uni.txt").write_text(word_text(WORDS, 2000), encoding="utf-8")
    (d / "bin.dat").write_bytes(skewed_bytes(4000))
    return {"known": known_model(d / "known.safetensors", CHARS, PROBS),
            "uni": train(d / "uni.txt", d / "uni"),
            "bytes": train(d / "bin.dat", d / "bytes", "--bytes", steps=30)}


def run(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


def sample(*args, input=None) -> bytes:
    res = run("sample", *args, input=input)
    assert res.exit_code == 0, res.output
    return res.stdout_bytes


def softmax(z):
    z = np.asarray(z, np.float64) - np.max(z)
    return np.exp(z) / np.exp(z).sum()


# ---------------------------------------------------------------- the decoding rules
def _model_distribution(path, prime):
    ck = ckpt.load(path)
    be = CpuBackend(ck.config, ck.params)
    codes, _, _ = prime_codes(ck.vocab, prime)
    state, last = prime_state(be, codes, 1)
    logits, _ = be.step(last, state)
    return be, codes, softmax(logits[0])


def test_top_p_one_samples_the_full_distribution(models):
    be, codes, p = _model_distribution(models["known"], "ab")
    n = 4000
    drawn = np.concatenate([st.codes for st in stream(be, codes, Decoding(batch=n, length=1, top_p=1.0, seed=5))])
    counts = np.bincount(drawn, minlength=len(CHARS))
    assert (counts > 0).all()                                   # the 4% tail is drawn too
    assert chi_square(counts, p) < CHI2_999[len(CHARS) - 1]


def test_top_p_below_one_never_draws_outside_the_nucleus(models):
    be, codes, p = _model_distribution(models["known"], "ab")
    order = np.argsort(-p)
    nucleus = set(order[:np.searchsorted(np.cumsum(p[order]), 0.5) + 1].tolist())
    drawn = np.concatenate([st.codes for st in stream(be, codes, Decoding(batch=2000, length=1, top_p=0.5, seed=5))])
    assert set(drawn.tolist()) == nucleus


def test_cli_top_p_one_frequencies_match_the_model(models):
    _, _, p = _model_distribution(models["known"], "ab")
    out = sample(models["known"], "-N", 3000, "-n", 1, "--json", "--top-p", 1.0, "--seed", 11, "--prime", "ab")
    texts = [json.loads(line)["text"] for line in out.decode().splitlines()]
    counts = np.array([texts.count(c) for c in CHARS])
    assert counts.sum() == 3000 and (counts > 0).all()
    assert chi_square(counts, p) < CHI2_999[len(CHARS) - 1]


# ---------------------------------------------------------------- seeds, greedy, batches
def test_same_seed_gives_the_same_text_and_another_seed_does_not(models):
    a = sample(models["uni"], "--seed", 7, "-n", 200)
    assert a == sample(models["uni"], "--seed", 7, "-n", 200)
    assert a != sample(models["uni"], "--seed", 8, "-n", 200)
    assert len(a.decode()) == 201                               # 200 characters and the final newline


def test_top_k_one_is_temp_zero_and_ignores_the_seed(models):
    greedy = sample(models["uni"], "--temp", 0, "-n", 100, "--seed", 1, "-p", "To be")
    assert sample(models["uni"], "--top-k", 1, "-n", 100, "--seed", 2, "-p", "To be") == greedy
    assert sample(models["uni"], "--temp", 0, "-n", 100, "--seed", 3, "-p", "To be") == greedy


def test_sample_i_of_a_batch_is_the_single_sample_with_seed_plus_i(models):
    lines = sample(models["uni"], "-N", 4, "-n", 50, "--seed", 20, "--json").decode().splitlines()
    recs = [json.loads(x) for x in lines]
    assert [r["index"] for r in recs] == [0, 1, 2, 3] and [r["seed"] for r in recs] == [20, 21, 22, 23]
    alone = json.loads(sample(models["uni"], "-n", 50, "--seed", 22, "--json"))
    assert alone["text"] == recs[2]["text"]


def test_plain_samples_come_in_order_separated_and_equal_the_json_texts(models):
    common = ["-N", 3, "-n", 40, "--seed", 4, "-p", "To be"]
    texts = [json.loads(x)["text"] for x in sample(models["uni"], *common, "--json").decode().splitlines()]
    plain = sample(models["uni"], *common, "--separator", "@@@").decode()
    expected = "@@@\n".join("To be" + t + ("" if t.endswith("\n") else "\n") for t in texts)
    assert plain == expected
    blank = sample(models["uni"], *common).decode()              # default separator: a blank line
    assert blank == "\n".join("To be" + t + ("" if t.endswith("\n") else "\n") for t in texts)


def test_stop_ends_each_sample_and_keeps_the_string(models):
    out = sample(models["uni"], "-N", 6, "-n", 0, "--stop", "e", "--seed", 3, "--json", "-p", "The")
    recs = [json.loads(x) for x in out.decode().splitlines()]
    assert len(recs) == 6
    for r in recs:
        assert r["stopped"] and r["text"].endswith("e") and r["text"].count("e") == 1
        assert r["chars"] == len(r["text"])


def test_length_caps_a_sample_that_never_stops(models):
    r = json.loads(sample(models["uni"], "-n", 5, "--stop", "Ça va Ça va", "--seed", 3, "--json"))
    assert r["chars"] == 5 and not r["stopped"]


class _OpaqueState:
    """A state the sampler cannot slice, as a device backend's is."""
    def __init__(self, a):
        self.a = a


class _DeviceLike:
    """The CPU backend behind opaque states: stream() must keep every row and report live ones."""
    def __init__(self, be):
        self.be = be

    def zero_state(self, batch):
        return _OpaqueState(self.be.zero_state(batch))

    def loss(self, x, y, state):
        loss, st = self.be.loss(x, y, state.a)
        return loss, _OpaqueState(st)

    def step(self, codes, state):
        logits, st = self.be.step(codes, state.a)
        return logits, _OpaqueState(st)


def test_stop_with_an_unsliceable_state_gives_the_same_samples(models):
    ck = ckpt.load(ckpt.resolve(str(models["uni"])))
    be = CpuBackend(ck.config, ck.params)
    codes, _, _ = prime_codes(ck.vocab, "To be")
    stop = ck.vocab.encode("e").astype(np.int64)

    def texts(backend):
        got = {i: [] for i in range(5)}
        for st in stream(backend, codes, Decoding(batch=5, length=80, seed=3, stop=stop)):
            for r, c in zip(st.rows.tolist(), st.codes.tolist()):
                got[r].append(c)
        return [ck.vocab.decode(v) for v in got.values()]

    sliced = texts(be)
    assert texts(_DeviceLike(be)) == sliced
    assert all(t.endswith("e") or len(t) == 80 for t in sliced)


# ---------------------------------------------------------------- primes
def test_prime_is_echoed_first_unless_no_echo(models):
    echoed = sample(models["uni"], "-p", "To be", "-n", 30, "--seed", 1).decode()
    bare = sample(models["uni"], "-p", "To be", "-n", 30, "--seed", 1, "--no-echo").decode()
    assert echoed == "To be" + bare


def test_prime_from_stdin_and_from_a_file_equal_the_argument(models, tmp_path):
    want = sample(models["uni"], "-p", "To be", "-n", 30, "--seed", 1)
    assert sample(models["uni"], "--prime", "-", "-n", 30, "--seed", 1, input="To be") == want
    (tmp_path / "prime.txt").write_text("To be", encoding="utf-8")
    assert sample(models["uni"], "--prime-file", tmp_path / "prime.txt", "-n", 30, "--seed", 1) == want


def test_unicode_prime_round_trips_in_a_model_that_knows_its_characters(models):
    out = sample(models["uni"], "-p", UNICODE_PRIME, "-n", 40, "--seed", 2).decode("utf-8")
    assert out.startswith(UNICODE_PRIME) and len(out) == len(UNICODE_PRIME) + 41


def test_prime_outside_the_vocabulary_is_a_one_line_error_listing_the_characters(models):
    res = run("sample", models["known"], "-p", UNICODE_PRIME)
    assert res.exit_code == 2 and res.stdout == ""
    msg = res.stderr.strip()
    assert "\n" not in msg and "'Ç'" in msg and "'—'" in msg and "'ï'" in msg and "'é'" in msg


def test_unknown_skip_drops_the_characters_and_says_so(models):
    res = run("sample", models["known"], "-p", "aÇbé", "--unknown", "skip", "-n", 5, "--seed", 1)
    assert res.exit_code == 0 and res.stdout.startswith("ab") and len(res.stdout) == 2 + 5 + 1
    assert "'Ç'" in res.stderr and "'é'" in res.stderr


# ---------------------------------------------------------------- JSON lines
def test_json_log_probability_is_the_models_score_of_the_text(models):
    out = sample(models["uni"], "-p", "To be", "-n", 60, "--seed", 9, "--temp", 0.7, "--json")
    rec = json.loads(out)
    assert set(rec) >= {"text", "seed", "logprob", "bits_per_char", "chars", "prime", "index", "stopped"}
    assert rec["seed"] == 9 and rec["prime"] == "To be" and rec["chars"] == 60
    ck = ckpt.load(ckpt.resolve(str(models["uni"])))
    be = CpuBackend(ck.config, ck.params)
    with_text, _ = evaluate(be, ck.vocab.encode("To be" + rec["text"]))
    prime_only, _ = evaluate(be, ck.vocab.encode("To be"))
    assert rec["logprob"] == pytest.approx(-(with_text - prime_only), rel=1e-4)
    assert rec["bits_per_char"] == pytest.approx(-rec["logprob"] / np.log(2) / 60)


# ---------------------------------------------------------------- byte models
def test_byte_model_writes_raw_bytes_and_echoes_a_binary_prime_exactly(models, tmp_path):
    prime = bytes(range(256))
    (tmp_path / "prime.bin").write_bytes(prime)
    out = sample(models["bytes"], "--prime-file", tmp_path / "prime.bin", "-n", 100, "--seed", 3)
    assert out[:256] == prime and len(out) == 356                # no newline added to bytes
    rec = json.loads(sample(models["bytes"], "--prime-file", tmp_path / "prime.bin", "-n", 100, "--seed", 3,
                            "--json"))
    assert base64.b64decode(rec["bytes_b64"]) == out[256:]


def test_byte_model_learns_which_bytes_occur(models):
    out = sample(models["bytes"], "-n", 2000, "--seed", 1)
    assert np.isin(np.frombuffer(out, np.uint8), np.frombuffer(BYTE_VALUES, np.uint8)).mean() > 0.5


# ---------------------------------------------------------------- usage errors and conventions
@pytest.mark.parametrize("args", [
    ["-p", "ab", "--prime-file", "x"],            # two primes
    ["-n", "0", "-N", "2"],                       # endless batch without a stop
    ["-n", "0", "--json"],                        # endless JSON without a stop
    ["--stop", "Z"],                              # a stop string the model cannot write
    ["--top-p", "0"], ["--temp", "-1"], ["-N", "0"], ["--unknown", "ignore"],
])
def test_bad_sample_options_are_usage_errors_exit_2(models, args):
    res = run("sample", models["known"], *args)
    assert res.exit_code == 2 and res.stdout == "" and res.stderr.strip()


def test_options_come_from_charrnn_environment_variables(models):
    env = {"CHARRNN_SAMPLE_LENGTH": "7", "CHARRNN_SAMPLE_PRIME": "To be", "CHARRNN_SAMPLE_ECHO": "false"}
    res = CliRunner().invoke(cli, ["sample", str(models["uni"]), "--seed", "5"], auto_envvar_prefix="CHARRNN",
                             env=env)
    assert res.exit_code == 0 and len(res.stdout) == 8


def test_shell_completion_completes_sample_options():
    env = {"_CHARRNN_COMPLETE": "bash_complete", "COMP_WORDS": "charrnn sample --to", "COMP_CWORD": "2"}
    res = CliRunner().invoke(cli, [], prog_name="charrnn", env=env)
    assert "--top-k" in res.stdout and "--top-p" in res.stdout


def test_compile_notices_wait_for_a_real_compilation():
    from numba import njit

    from charrnn.backends import compile_notices as _compile_notices
    said = []
    notify = _compile_notices(said.append)
    notify("compiling kernels, first run only...")      # the backend's timer: slow, but a cache load
    assert said == []
    notify("kernels ready (1 s; cached for next time)")
    assert said == []

    said2 = []
    notify2 = _compile_notices(said2.append)
    notify2("compiling kernels, first run only...")
    njit(lambda x: x + 1)(41)                             # Numba compiles: the held notice is said
    assert said2 == ["compiling kernels, first run only..."]
    notify2("kernels ready (1 s; cached for next time)")
    assert said2[-1].startswith("kernels ready")


# ---------------------------------------------------------------- the compiled sampling loop
def _codes_and_logp(backend, prime, n, length, temp, top_k, seed=5):
    dec = Decoding(batch=n, length=length, temperature=temp, top_k=top_k, seed=seed)
    got = [(st.codes.copy(), st.logp.copy()) for st in stream(backend, prime, dec)]
    return np.array([c for c, _ in got]), np.array([lp for _, lp in got])


@pytest.mark.parametrize("cell,layers,embed", [("lstm", 2, 0), ("lstm", 1, 3), ("gru", 2, 0), ("rnn", 1, 0),
                                               ("lnlstm", 2, 0), ("lnlstm", 1, 3),     # lnlstm: cpu_norm.ln_generate
                                               ("zolnlstm", 2, 0)])                    # with zoneout's expectation
@pytest.mark.parametrize("n,temp,top_k", [(1, 1.0, 0), (3, 0.7, 3), (2, 0.0, 0), (6, 0.9, 4)])   # 6: lstm_generate_many
def test_cpu_sampling_loop_draws_what_the_reference_stepped_in_numpy_draws(cell, layers, embed, n, temp, top_k):
    from charrnn.model import init_params
    zo = cell.startswith("zo")
    cfg = tiny_config(vocab_size=7, hidden=6, layers=layers, cell="lstm" if "ln" in cell else cell, embed=embed,
                      norm="layer" if "ln" in cell else "none", zoneout_cell=0.4 if zo else 0.0,
                      zoneout_hidden=0.2 if zo else 0.0)
    p = init_params(cfg, np.random.default_rng(4), np.float64)
    p.flat *= 3                                      # peaked distributions, yet varied draws
    be = CpuBackend(cfg, p)
    calls = count_calls(be, "generate")
    prime = np.array([1, 4, 2, 0])
    # 40 steps cross chunk boundaries (8, 16, 16): the state and last code carry over
    fast_codes, fast_logp = _codes_and_logp(be, prime, n, 40, temp, top_k)
    slow_codes, slow_logp = _codes_and_logp(RefStep(cfg, p), prime, n, 40, temp, top_k)
    assert calls["generate"] == 1
    assert fast_codes.shape == (40, n)
    np.testing.assert_array_equal(fast_codes, slow_codes)
    np.testing.assert_allclose(fast_logp, slow_logp, rtol=1e-12, atol=1e-12)
    if temp > 0:
        assert len(np.unique(fast_codes)) > 2      # the draws are not stuck on one code


def test_cpu_sampling_loop_without_end_streams_what_a_capped_run_gives():
    from itertools import islice
    from charrnn.model import init_params
    from charrnn.sample import generate
    cfg = tiny_config(vocab_size=5, hidden=4, layers=1)
    be = CpuBackend(cfg, init_params(cfg, np.random.default_rng(2)))
    endless = [c.copy() for c, _ in islice(generate(be, np.array([0]), Decoding(length=0, seed=9)), 30)]
    capped = [c.copy() for c, _ in generate(be, np.array([0]), Decoding(length=30, seed=9))]
    np.testing.assert_array_equal(endless, capped)


# ---------------------------------------------------------------- documents (a model with the end symbol)
@pytest.fixture(scope="module")
def doc_model(tmp_path_factory):
    """A model of documents: "abc" and the end symbol, drawn one time in five."""
    return known_model(tmp_path_factory.mktemp("docs") / "doc.safetensors", "abc", [0.3, 0.3, 0.2, 0.2], eod=True)


def test_documents_n_writes_n_whole_documents_and_stops(doc_model):
    lines = [json.loads(x) for x in sample(doc_model, "--documents", "3", "--seed", "5", "--json").splitlines()]
    assert [x["index"] for x in lines] == [0, 1, 2] and all(x["stopped"] for x in lines)
    assert all(set(x["text"]) <= set("abc") for x in lines)     # the end symbol is never written
    plain = sample(doc_model, "--documents", "3", "--seed", "5").decode()
    assert plain == "\n".join(x["text"] + "\n" for x in lines)      # a blank line between documents


def test_until_end_runs_one_sample_past_the_default_length_to_its_documents_end(tmp_path):
    rare = known_model(tmp_path / "rare.safetensors", "abc", [0.333, 0.333, 0.333, 0.001], eod=True)
    line = json.loads(sample(rare, "--until-end", "--seed", "3", "--json"))
    assert line["stopped"] and line["chars"] > 0
    capped = json.loads(sample(rare, "--until-end", "--seed", "3", "--json", "-n", "5"))
    assert capped["chars"] == 5 and capped["text"] == line["text"][:5]


def test_a_sample_of_a_document_model_starts_after_the_end_symbol(doc_model):
    ck = ckpt.load(doc_model)
    codes, echo, _ = prime_codes(ck.vocab, "ab")
    assert codes.tolist() == [3, 0, 1] and echo == b"ab"
    assert prime_codes(ck.vocab, "")[0].tolist() == [3]


def test_documents_on_a_model_of_one_text_is_a_one_line_error(models):
    res = run("sample", models["uni"], "--documents", "2")
    assert res.exit_code == 2 and "knows no end of a document" in res.output
    res = run("sample", models["uni"], "--documents", "2", "-N", "2")
    assert res.exit_code == 2 and "not both" in res.output
