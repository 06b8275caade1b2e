"""How far the training fixture of tests/test_train.py moves between machines: the source of the
float32 tolerance in tests/train_fixture.py.

    python bench/fixture_spread.py               # every variant below, against the native run
    python bench/fixture_spread.py --variants native,avx2

One machine stands in for many: OpenBLAS takes any kernel family the CPU can run
(OPENBLAS_CORETYPE), Numba compiles for another CPU and vector width (NUMBA_CPU_NAME,
NUMBA_CPU_FEATURES), NumPy's own loops can be kept off AVX-512 (NPY_DISABLE_CPU_FEATURES), and a
thread count changes the backend's paths (CHARRNN_THREADS). Each variant runs the fixture's short
run and its resume in a fresh process with a cache of its own; the table gives each one's largest
weight difference and bits/char difference from the native run, and whether it reproduces a
recorded fixture bit for bit.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

NUMPY_AVX512 = ("X86_V4 AVX512F AVX512CD AVX512VL AVX512BW AVX512DQ AVX512VNNI AVX512IFMA AVX512VBMI AVX512VBMI2 "
                "AVX512BITALG AVX512BF16 AVX512VPOPCNTDQ AVX512_SKX AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR")


def _features(drop) -> str:
    """The host's CPU features for NUMBA_CPU_FEATURES, with those `drop` accepts turned off."""
    import llvmlite.binding as ll
    return ",".join(("-" if (not on or drop(k)) else "+") + k for k, on in sorted(ll.get_host_cpu_features().items()))


def variants() -> dict[str, dict[str, str]]:
    host = _features(lambda k: False)
    no512 = _features(lambda k: k.startswith("avx512"))
    skx = _features(lambda k: k.startswith("avx512") and k not in ("avx512f", "avx512cd", "avx512bw",
                                                                   "avx512dq", "avx512vl"))
    return {
        "native": {},
        "blas-haswell": {"OPENBLAS_CORETYPE": "Haswell"},
        "blas-zen": {"OPENBLAS_CORETYPE": "Zen"},
        "blas-sandybridge": {"OPENBLAS_CORETYPE": "SandyBridge"},
        "1-thread": {"CHARRNN_THREADS": "1"},
        "4-threads": {"CHARRNN_THREADS": "4"},
        # an AVX2 machine: OpenBLAS's AVX2 kernels, Numba and NumPy without AVX-512
        "avx2-zen3": {"OPENBLAS_CORETYPE": "Zen", "NUMBA_CPU_NAME": "znver3", "NUMBA_CPU_FEATURES": no512,
                      "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512},
        "avx2-haswell": {"OPENBLAS_CORETYPE": "Haswell", "NUMBA_CPU_NAME": "haswell",
                         "NUMBA_CPU_FEATURES": no512, "NPY_DISABLE_CPU_FEATURES": NUMPY_AVX512},
        # an Intel Skylake-SP: LLVM's tuning for it prefers 256-bit vectors
        "skylake-avx512": {"NUMBA_CPU_NAME": "skylake-avx512", "NUMBA_CPU_FEATURES": skx,
                           "NPY_DISABLE_CPU_FEATURES": "AVX512_CLX AVX512_CNL AVX512_ICL AVX512_SPR"},
        "numba-host-features": {"NUMBA_CPU_NAME": "generic", "NUMBA_CPU_FEATURES": host},
    }


def child() -> None:
    import train_fixture as tf
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        first, resumed = tf.run_and_resume(Path(tmp), tf.TINY, *tf.CPU_STEPS)
    from charrnn import machine
    print("RESULT " + json.dumps({"first": first.record(), "resumed": resumed.record(),
                                  "signature": tf.machine_signature("cpu"), "machine": machine.describe()}))


def run_variant(env_extra: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as corpora_cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, CHARRNN_CACHE=corpora_cache, **env_extra)
        r = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                           timeout=1800)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"variant failed: {r.stderr[-2000:]}")
    return json.loads(line[7:])


def weights(rec: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(rec["weights"]), dtype="<f4").astype(np.float64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default=",".join(variants()))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write every variant's records to this file")
    a = ap.parse_args()
    if a.child:
        return child()
    import train_fixture as tf
    known = {rec["first"]["sha256"]: name for name, _, rec in tf.recorded("cpu")}
    table = {name: variants()[name] for name in a.variants.split(",")}
    got = {}
    for name, env in table.items():
        got[name] = run_variant(env)
        print(f"{name}: {got[name]['machine']}", file=sys.stderr, flush=True)
    base = got.get("native") or next(iter(got.values()))
    print("| variant | BLAS kernels | Numba CPU | weights, max abs diff (run / resume) | bits/char, max abs diff "
          "| first run's sha256 | reproduces |")
    print("|---|---|---|---|---|---|---|")
    for name, g in got.items():
        dw = [float(np.max(np.abs(weights(g[k]) - weights(base[k])))) for k in ("first", "resumed")]
        db = max(abs(x - y) for k in ("first", "resumed") for gc, bc in zip(g[k]["curve"], base[k]["curve"])
                 for x, y in zip(gc[1:3], bc[1:3]))
        sig = g["signature"]
        print(f"| {name} | {sig['blas']['core']} | {sig['llvm_cpu']} | {dw[0]:.2g} / {dw[1]:.2g} | {db:.2g} "
              f"| {g['first']['sha256'][:12]} | {known.get(g['first']['sha256'], '-')} |")
    if a.json:
        Path(a.json).write_text(json.dumps(got, indent=1))


if __name__ == "__main__":
    main()
