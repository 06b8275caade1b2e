"""Tiny models and the helpers the test files share: `tiny_config` (the tests' model settings),
models built directly with a known output distribution or trained for a few dozen steps through
`charrnn train`, statistics for the sampling tests, and stand-in backends."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from charrnn import checkpoint as ckpt
from charrnn import reference as ref
from charrnn.cli import cli, main
from charrnn.corpus import Vocab
from charrnn.model import ModelConfig, init_params, param_shapes
from charrnn.sample import step_loop

# Words whose characters the Unicode model knows; "Ça va — naïve café" is made of them.
WORDS = ["To ", "be, ", "or ", "not ", "to ", "be. ", "Ça ", "va ", "— ", "naïve ", "café!\n", "the ", "cat "]
UNICODE_PRIME = "Ça va — naïve café"
# A skewed distribution over seven byte values, for the byte-model statistics test.
BYTE_VALUES = bytes([0x00, 0xFF, 0x80, 0x0A, 0x41, 0xC3, 0x7F])
BYTE_PROBS = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05])


def tiny_config(**kw) -> ModelConfig:
    """A ModelConfig for tests: no dropout and char-rnn's uniform init unless asked, so what a
    test pins does not move with the product's defaults (config.py)."""
    return ModelConfig(**{"dropout": 0.0, "init": "uniform", **kw})


def random_case(cfg, T, B, dtype, seed=0):
    """Random weights (N(0, 0.3)), codes (T, B) and a carried state: a generic kernel test case."""
    r = np.random.default_rng(seed)
    p = init_params(cfg, r, dtype=np.float64)
    p.flat[:] = r.normal(0, 0.3, p.flat.size)
    x = r.integers(0, cfg.vocab_size, (T, B))
    y = r.integers(0, cfg.vocab_size, (T, B))
    state = r.normal(0, 0.5, (cfg.layers, cfg.n_states, B, cfg.hidden))
    return p, x, y, state


def trained_like(cfg: ModelConfig, seed: int, scale: float, gain: float = 0.8) -> np.ndarray:
    """Weights in a trained model's regime: input weights and biases heavy-tailed (log-uniform
    magnitudes over three decades, up to `scale`), so some pre-activations reach +-100 while
    others stay near zero; recurrent weights of gain `gain` (below 1: the dynamics contract, as
    a trained model's do, so the float64 fast path can be held to 1e-9 over hundreds of steps
    instead of two chaotic trajectories being compared)."""
    r = np.random.default_rng(seed)
    p = init_params(cfg, r, dtype=np.float64)
    for name, shape in param_shapes(cfg):
        n = int(np.prod(shape))
        if name.endswith(".Wh"):
            p[name][...] = r.normal(0, gain / np.sqrt(cfg.hidden), shape)
        elif name.startswith("out."):
            p[name][...] = r.normal(0, 1.0, shape)
        else:
            p[name][...] = (r.choice([-1.0, 1.0], n) * scale * 10.0 ** r.uniform(-3, 0, n)).reshape(shape)
    return p


def carried_state(cfg: ModelConfig, B: int, seed: int, c_max: float) -> np.ndarray:
    """A carried state: h in (-1, 1); LSTM cell states log-uniform up to c_max in size."""
    r = np.random.default_rng(seed + 1)
    s = np.empty((cfg.layers, cfg.n_states, B, cfg.hidden))
    s[:, 0] = r.uniform(-1, 1, s[:, 0].shape)
    if cfg.cell == "lstm":
        s[:, 1] = r.choice([-1.0, 1.0], s[:, 1].shape) * c_max * 10.0 ** r.uniform(-4, 0, s[:, 1].shape)
    return s


def run_main(args, monkeypatch, capsys, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run main() as the console script would; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["charrnn", *args])
    if stdin is not None:
        import io
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def word_text(words: list[str], n: int, seed: int = 0) -> str:
    r = np.random.default_rng(seed)
    return "".join(words[i] for i in r.integers(0, len(words), n))


def skewed_bytes(n: int, seed: int = 0) -> bytes:
    r = np.random.default_rng(seed)
    return bytes(np.frombuffer(BYTE_VALUES, np.uint8)[r.choice(len(BYTE_VALUES), n, p=BYTE_PROBS)])


def known_model(path: Path, chars: str, probs, hidden: int = 8, seed: int = 0, eod: bool = False) -> Path:
    """A random LSTM whose output bias is log(probs) and whose output weights are small, so its
    next-character distribution is near `probs` but still depends on the input. With `eod` the
    vocabulary has the end-of-document symbol after `chars` (the last of `probs` is its)."""
    cfg = tiny_config(vocab_size=len(chars) + eod, hidden=hidden, layers=1)
    params = init_params(cfg, np.random.default_rng(seed))
    params["out.b"][...] = np.log(np.asarray(probs, dtype=np.float64)).astype(np.float32)
    params["out.W"][...] *= 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.save(path, ckpt.Checkpoint(config=cfg, vocab=Vocab(chars=chars, eod=eod), params=params))
    return path


def train(text_path: Path, out: Path, *extra: str, steps: int = 60) -> Path:
    """A tiny model trained through the CLI; returns its run directory."""
    args = ["train", str(text_path), "--hidden", "16", "--layers", "1", "--seq-len", "16", "--batch-size", "8",
            "--max-steps", str(steps), "--lr", "0.01", "--dropout", "0", "--device", "cpu", "--out", str(out),
            *extra]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (out / "best.safetensors").is_file()
    return out


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


# 99.9% quantiles of chi-square with k degrees of freedom (seeded tests: a bound, not a gamble)
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32}


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())


def log2(x: float) -> float:
    return math.log(x, 2)


class HostLoop:
    """A stand-in backend's own sampling loop: sample.step_loop, which steps the backend and
    draws in NumPy, the path a compiled generate() must agree with."""

    def generate(self, prime_codes, dec, state=None):
        for st in step_loop(self, prime_codes, dec):
            yield st.codes, st.logp


class PerStep(HostLoop):
    """A backend whose sampling loop is the host's step_loop (its own generate() is never run)."""
    def __init__(self, be):
        self.be = be

    def __getattr__(self, name):
        return getattr(self.be, name)


def count_calls(be, *names: str) -> dict:
    """Count calls of the backend's methods `names` (instance attributes shadow the methods)."""
    calls = dict.fromkeys(names, 0)
    for name in names:
        method = getattr(be, name)

        def counted(*a, _name=name, _method=method, **kw):
            calls[_name] += 1
            return _method(*a, **kw)
        setattr(be, name, counted)
    return calls


class RefStep(HostLoop):
    """reference.forward one step at a time, in float64: what sample.stream() must draw."""

    def __init__(self, cfg, p):
        self.cfg, self.p = cfg, p

    def step(self, codes, state):
        with np.errstate(over="ignore"):
            logits, _, new_state = ref.forward(self.p, self.cfg, np.asarray(codes).reshape(1, -1), None, state)
        return logits[0], new_state

    def loss(self, x, y, state):           # the prime's windows (sample.prime_state)
        with np.errstate(over="ignore"):
            loss, _, new_state = ref.forward(self.p, self.cfg, x, y, state)
        return loss, new_state

    def zero_state(self, batch):
        return np.zeros((self.cfg.layers, self.cfg.n_states, batch, self.cfg.hidden))
