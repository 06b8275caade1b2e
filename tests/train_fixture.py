"""The short training run that tests/test_train.py pins, its recorded fixtures, and the two ways a
run is held to them.

A fixture is the digest, validation curve and final weights of a short `charrnn train` and of its
resume, recorded on one machine (tests/record_fixtures.py) and stored under the numerics signature
of that machine (charrnn/machine.py) in tests/fixtures/train/<signature id>.json. On a machine
whose signature has a fixture the run must reproduce it bit for bit: "a refactoring leaves the
bits unchanged". Elsewhere float32 sums run in another order (SIMD width, BLAS kernels, threads),
so the run is compared with the nearest recorded fixture within TOLERANCE instead.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from click.testing import CliRunner

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "train"

TINY = ["--hidden", "16", "--layers", "2", "--dropout", "0.2", "--seq-len", "10", "--batch-size", "4",
        "--seed", "3", "--device", "cpu", "--val-every", "5", "--no-diag", "--lr-decay", "0.8",
        "--lr-decay-after", "0", "--lr-plateau", "0.5",
        "--lr", "2e-3", "--lr-floor", "0.1", "--norm", "none"]   # the defaults when the fixture was first recorded
CPU_STEPS = (20, 30, 5)     # the run's steps, the resumed run's, --val-every given again on resuming

# The same run on the CUDA backend in the simulator (kernels run as Python threads), shrunk to what
# it runs in under a minute of CPU: a smaller model and batch, a few steps, still two layers with
# dropout, a validation after each run and a resume.
SIM_TINY = ["--hidden", "4", "--layers", "2", "--dropout", "0.2", "--seq-len", "5", "--batch-size", "2",
            "--val-frac", "0.02", "--seed", "3", "--device", "cuda", "--val-every", "2", "--no-diag",
            "--lr-decay", "0.8", "--lr-decay-after", "0", "--lr-plateau", "0.5", "--lr", "2e-3", "--lr-floor", "0.1",
            "--norm", "none"]
SIM_STEPS = (2, 4, 2)

# Measured with bench/fixture_spread.py (bench/RESULTS.md, "Fixtures across machines"): the CPU
# fixture run under every BLAS kernel family, vector width, LLVM tuning and thread count a 2-core
# AVX-512 EPYC can emulate (two of them reproduce bit for bit the digests recorded on a real AVX2
# EPYC and a real AVX-512 Xeon), against its native bits. The widest spread, over all variants
# and both runs, was 8.5e-7 in a weight, and none in the curve's printed digits (5 decimals). The
# bounds leave 10x room on the weights and still sit 100x below a 1e-3 change to one weight.
TOLERANCE = {"weight_abs": 1e-5, "bpc_abs": 1e-4, "lr_rel": 1e-6}


@dataclass
class RunResult:
    """What one `charrnn train` (or its resume) left in last.safetensors and metrics.jsonl."""
    weights: np.ndarray                 # the flat parameter buffer, float32
    others: list[tuple[str, np.ndarray]]    # optimizer moments by name, then the carried state
    curve: list                         # [step, train bits/char, validation bits/char, rate]

    @property
    def sha256(self) -> str:
        """sha256 over the weights, the optimizer's moments and the carried state."""
        h = hashlib.sha256(np.ascontiguousarray(self.weights, dtype="<f4").tobytes())
        for name, a in self.others:
            if name:
                h.update(name.encode())
            h.update(np.ascontiguousarray(a, dtype="<f4").tobytes())
        return h.hexdigest()

    def record(self) -> dict:
        return {"sha256": self.sha256, "curve": self.curve,
                "weights": base64.b64encode(np.ascontiguousarray(self.weights, dtype="<f4").tobytes()).decode()}


def text(path: Path) -> Path:
    words = ["the ", "cat ", "sat ", "on ", "a ", "mat.\n", "dog ", "ran ", "far, ", "so "]
    r = np.random.default_rng(0)
    path.write_text("".join(words[i] for i in r.integers(0, len(words), 300)), encoding="utf-8")
    return path


def read_run(run: Path) -> RunResult:
    from charrnn import checkpoint as ckpt

    ck = ckpt.load(run / "last.safetensors")
    others = [(name, ck.optim_state[name]) for name in sorted(ck.optim_state)]
    if ck.state is not None:
        others.append(("", ck.state))
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = [[r["step"], r["train_bpc"], r["val_bpc"], r["lr"]] for r in recs if "val_bpc" in r]
    return RunResult(np.array(ck.params.flat, dtype=np.float32), others, curve)


def run_and_resume(tmp_path: Path, flags: list, steps: int, resumed_steps: int, val_every: int
                   ) -> tuple[RunResult, RunResult]:
    """A run of `steps`, then its resume to `resumed_steps`."""
    from charrnn.cli import cli

    txt = text(tmp_path / "t.txt")
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", str(txt), "--out", str(run), "--max-steps", str(steps), *flags])
    assert r.exit_code == 0, r.output
    first = read_run(run)
    # resume: the run's own options, --max-steps and --val-every given again on the command line
    r = CliRunner().invoke(cli, ["train", str(txt), "--resume", str(run / "last.safetensors"),
                                 "--max-steps", str(resumed_steps), "--val-every", str(val_every)])
    assert r.exit_code == 0, r.output
    return first, read_run(run)


def cpu_paths() -> dict:
    """The CPU backend's path choices for the fixture's shapes (lanes, threads, transposition):
    they depend on the core count, and order the sums as much as the CPU does."""
    from charrnn.backends.cpu import CpuBackend
    from charrnn.model import ModelConfig, init_params

    T, B = int(TINY[TINY.index("--seq-len") + 1]), int(TINY[TINY.index("--batch-size") + 1])
    cfg = ModelConfig(vocab_size=20, hidden=16, layers=2)
    be = CpuBackend(cfg, init_params(cfg, np.random.default_rng(0)))
    return {"lanes": be._lanes_for(T, B), "update_lanes": be._lanes_for_update(),
            "step_threads": min(be._step_threads(B), 2), "transposed": be._transposed(B)}


def machine_signature(kind: str) -> dict:
    from charrnn import machine

    return machine.signature(cpu_paths() if kind == "cpu" else None)


def recorded(kind: str) -> list[tuple[str, dict, dict]]:
    """(file stem, signature, record) for every fixture of this kind ("cpu" or "cuda-sim");
    a record holds "first" and "resumed", each a RunResult.record()."""
    out = []
    for path in sorted(FIXTURES.glob(f"{kind}--*.json")):
        rec = json.loads(path.read_text())
        out.append((path.stem, rec["signature"], rec))
    return out


def fixture_path(kind: str, sig: dict) -> Path:
    from charrnn import machine

    return FIXTURES / f"{kind}--{machine.signature_id(sig)}.json"


def pick(kind: str, sig: dict) -> tuple[str, str, dict]:
    """("exact" or "tolerance", fixture name, record): this signature's own fixture where one is
    recorded, else the nearest."""
    from charrnn import machine

    fixtures = recorded(kind)
    assert fixtures, f"no {kind} fixture recorded under {FIXTURES}: run python tests/record_fixtures.py"
    for name, s, rec in fixtures:
        if s == sig:
            return "exact", name, rec
    name, s, rec = min(fixtures, key=lambda f: machine.distance(sig, f[1]))
    return "tolerance", name, rec


def exact_problems(got: RunResult, want: dict) -> list[str]:
    out = []
    if got.sha256 != want["sha256"]:
        out.append(f"sha256 {got.sha256} != recorded {want['sha256']}")
    if got.curve != want["curve"]:
        out.append(f"curve {got.curve} != recorded {want['curve']}")
    return out


def tolerance_problems(got: RunResult, want: dict, tol: dict = TOLERANCE) -> list[str]:
    out = []
    w = np.frombuffer(base64.b64decode(want["weights"]), dtype="<f4")
    if w.shape != got.weights.shape:
        return [f"{got.weights.size} weights, recorded {w.size}"]
    worst = float(np.max(np.abs(got.weights.astype(np.float64) - w)))
    if not worst <= tol["weight_abs"]:
        out.append(f"weights differ by up to {worst:.3g} (tolerance {tol['weight_abs']:g})")
    if [c[0] for c in got.curve] != [c[0] for c in want["curve"]]:
        return out + [f"validations at steps {[c[0] for c in got.curve]}, recorded {[c[0] for c in want['curve']]}"]
    for g, r in zip(got.curve, want["curve"]):
        if not (abs(g[1] - r[1]) <= tol["bpc_abs"] and abs(g[2] - r[2]) <= tol["bpc_abs"]):
            out.append(f"step {g[0]}: bits/char {g[1:3]} against {r[1:3]} (tolerance {tol['bpc_abs']:g})")
        if not abs(g[3] - r[3]) <= tol["lr_rel"] * abs(r[3]):
            out.append(f"step {g[0]}: rate {g[3]} against {r[3]}")
    return out
