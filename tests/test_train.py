"""The training run as a whole: a short `charrnn train` and its resume give the bits recorded for
this machine's numerics signature, on the CPU and on the CUDA backend under the simulator.

Any refactoring of the trainer, the options, the schedule or the CLI must leave these bits
unchanged; a deliberate numerical change re-records them (python tests/record_fixtures.py --force)
and says why in its commit. On a machine with no fixture of its own, the run is held to the
nearest recorded one within a float32 tolerance (tests/train_fixture.py says how it was measured),
and the summary at the end of the test run says which comparison ran.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import train_fixture as tf
from charrnn.train import Trainer

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def hold_to_fixture(kind: str, first: tf.RunResult, resumed: tf.RunResult, sig: dict) -> str:
    """Assert the runs match this signature's fixture bit for bit, or the nearest one within the
    tolerance; returns which comparison ran."""
    how, name, rec = tf.pick(kind, sig)
    problems = []
    for got, key in ((first, "first"), (resumed, "resumed")):
        check = tf.exact_problems if how == "exact" else tf.tolerance_problems
        problems += [f"{key} run: {p}" for p in check(got, rec[key])]
    said = (f"{kind}: bit-exact against {name}" if how == "exact" else
            f"{kind}: no fixture for this machine's signature; within tolerance of the nearest, {name} "
            f"(record one: python tests/record_fixtures.py)")
    assert not problems, ("\n".join(problems) + f"\n{said}\nthis machine's numerics signature: "
                          + json.dumps(sig, sort_keys=True))
    return said


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory):
    """The fixture's CPU run and its resume, run once for the tests below."""
    tmp = tmp_path_factory.mktemp("fixture-run")
    old = os.getcwd()
    os.chdir(tmp)
    try:
        return tf.run_and_resume(tmp, tf.TINY, *tf.CPU_STEPS)
    finally:
        os.chdir(old)


def test_short_run_and_its_resume_reproduce_the_recorded_bits(cpu_runs, request):
    said = hold_to_fixture("cpu", *cpu_runs, tf.machine_signature("cpu"))
    request.node.user_properties.append(("fixture_comparison", said))     # for the run's summary


def test_every_recorded_cpu_fixture_agrees_with_this_machine_within_the_tolerance(cpu_runs):
    """The tolerance is wide enough for the machines that recorded fixtures: each one's run is
    within it of this machine's (exactly equal on this machine's own)."""
    for name, _, rec in tf.recorded("cpu"):
        for got, key in zip(cpu_runs, ("first", "resumed")):
            assert tf.tolerance_problems(got, rec[key]) == [], f"{name}, {key} run"


def test_a_signature_with_no_fixture_is_held_to_the_nearest_within_the_tolerance(cpu_runs):
    sig = dict(tf.machine_signature("cpu"), llvm_cpu="a-cpu-nobody-recorded")
    assert "within tolerance of the nearest" in hold_to_fixture("cpu", *cpu_runs, sig)


def _nudged(run: tf.RunResult, amount: float | None) -> tf.RunResult:
    """The run with one weight of one tensor moved: by one ulp (amount None) or by `amount`."""
    w = run.weights.copy()
    i = w.size // 3
    w[i] = np.nextafter(w[i], np.float32(np.inf)) if amount is None else w[i] + np.float32(amount)
    return tf.RunResult(w, run.others, run.curve)


def test_one_ulp_in_one_weight_fails_the_bit_exact_comparison_but_not_the_tolerance(cpu_runs):
    first, _ = cpu_runs
    nudged = _nudged(first, None)
    assert not np.array_equal(nudged.weights, first.weights)
    assert tf.exact_problems(first, first.record()) == []
    assert any("sha256" in p for p in tf.exact_problems(nudged, first.record()))
    assert tf.tolerance_problems(nudged, first.record()) == []


def test_a_change_of_1e_3_in_one_weight_fails_both_comparisons(cpu_runs):
    first, _ = cpu_runs
    nudged = _nudged(first, 1e-3)
    assert tf.exact_problems(nudged, first.record()) != []
    assert any("weights differ" in p for p in tf.tolerance_problems(nudged, first.record()))


@pytest.mark.skipif(not SIM, reason="runs under NUMBA_ENABLE_CUDASIM=1, started by the test below")
def test_cuda_short_run_and_its_resume_reproduce_the_recorded_bits_in_the_simulator(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Trainer, "sample_chars", 0)     # as recorded: samples take minutes in the simulator
    first, resumed = tf.run_and_resume(tmp_path, tf.SIM_TINY, *tf.SIM_STEPS)
    print("\nFIXTURE " + hold_to_fixture("cuda-sim", first, resumed, tf.machine_signature("cuda-sim")))


@pytest.mark.slow
@pytest.mark.skipif(SIM, reason="this is the launcher of the simulator run")
def test_cuda_backend_reproduces_the_recorded_bits_under_the_simulator(request):
    # the simulator must be switched on before numba.cuda is first imported: a fresh process
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests" / "offline"), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-x", "-p", "no:cacheprovider",
                        "-W", "ignore::RuntimeWarning", "-k", "reproduce_the_recorded_bits_in_the_simulator",
                        __file__], capture_output=True, text=True, env=env, cwd=root, timeout=1800)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout
    said = re.search(r"^FIXTURE (.*)$", r.stdout, re.M)
    assert said, r.stdout[-2000:]
    request.node.user_properties.append(("fixture_comparison", said.group(1)))


def test_the_last_line_names_checkpoints_only_where_they_were_written(tmp_path):
    from charrnn.train import summary_line
    res = {"reason": "reached --max-steps 3", "steps": 0, "epochs": 0.0, "elapsed_s": 1.0, "best_val_bpc": None}
    assert summary_line(res, tmp_path).endswith(f"no checkpoint was written to {tmp_path}")
    (tmp_path / "last.safetensors").write_bytes(b"x")
    assert summary_line(res, tmp_path).endswith(f"checkpoints in {tmp_path}")
