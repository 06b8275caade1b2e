"""What decides the float bits of a run on this machine: its numerics signature.

Two machines that agree on every field of `signature()` run the same instructions in the same
order, so a seeded run gives the same bits on both; where a field differs, results agree only to
float32 rounding (the order of float sums changes with the SIMD width, the BLAS kernel family
and its thread count, and LLVM's tuning for the CPU). tests/test_train.py keys its recorded
fixtures by this signature (tests/fixtures/train/), and the benchmarks name machines with
`describe()`.
"""
from __future__ import annotations

import hashlib
import json
import platform
import re

# CPU features that change which vector instructions NumPy, Numba/LLVM or OpenBLAS use. The rest
# of the feature list (aes, sha, rdrand, ...) never touches a float.
_SIMD = re.compile(r"^(sse[\d.a-z]*|ssse3|avx.*|fma.*|f16c|amx.*|neon|sve.*|asimd.*|vsx|altivec)$")


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def _llvm_cpu() -> tuple[str, list[str]]:
    """The CPU name and the SIMD features Numba compiles for (NUMBA_CPU_NAME / NUMBA_CPU_FEATURES
    override the host's, as they do for Numba itself)."""
    import llvmlite.binding as ll
    from numba.core import config

    name = config.CPU_NAME or ll.get_host_cpu_name()
    if config.CPU_FEATURES is not None:
        on = [f[1:] for f in config.CPU_FEATURES.split(",") if f.startswith("+")]
    else:
        on = [k for k, v in ll.get_host_cpu_features().items() if v]
    return name, sorted(f for f in on if _SIMD.match(f))


def _blas() -> dict:
    from charrnn.backends import cpu_kernels as K

    config = K.blas_config() or "none"
    return {"library": " ".join(w for w in config.split()[:2]), "core": K.blas_core() or "none",
            "threads": K.blas_threads()}


def _numpy_dispatch() -> list[str]:
    """The SIMD targets NumPy's own loops dispatch to here (exp, sums, ...)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:        # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return sorted(t for t in __cpu_dispatch__ if __cpu_features__.get(t, False))


def signature(paths: dict | None = None) -> dict:
    """The fields that decide float results here. `paths` adds the choices a backend made for the
    shapes at hand (lanes, threads, transposition), which also order the sums."""
    import llvmlite.binding as ll
    import numba
    import numpy as np

    info = _cpuinfo()
    cpu, simd = _llvm_cpu()
    sig = {
        "vendor": info.get("vendor_id", platform.machine()),
        "llvm_cpu": cpu,
        "simd": simd,
        "blas": _blas(),
        "numpy": {"version": np.__version__, "dispatch": _numpy_dispatch()},
        "numba": {"version": numba.__version__, "llvm": ".".join(map(str, ll.llvm_version_info))},
    }
    if paths is not None:
        sig["paths"] = paths
    return sig


def signature_id(sig: dict) -> str:
    """A file-name-safe name for a signature: readable parts, then a digest of the whole."""
    digest = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:10]
    vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(sig["vendor"], sig["vendor"].lower())
    parts = [vendor, sig["llvm_cpu"], sig["blas"]["core"], f"{sig['blas']['threads']}t", digest]
    return "-".join(re.sub(r"[^a-z0-9]+", "", p.lower()) for p in parts)


def describe() -> str:
    """One line naming the machine for benchmark tables: model, vector width, BLAS kernels."""
    info = _cpuinfo()
    model = info.get("model name", platform.processor() or platform.machine())
    cpu, simd = _llvm_cpu()
    width = "AVX-512" if "avx512f" in simd else "AVX2" if "avx2" in simd else "no AVX2"
    b = _blas()
    return f"{model} ({cpu}, {width}), {b['library']} {b['core']} kernels, {b['threads']} BLAS threads"


def distance(a: dict, b: dict) -> int:
    """How far apart two signatures are, for picking the nearest recorded fixture: the vector
    width and BLAS kernels weigh most, since they change the order of the most sums."""
    weights = {"simd": 8, "blas": 8, "llvm_cpu": 4, "numpy": 2, "paths": 2, "vendor": 1, "numba": 1}
    return sum(w for k, w in weights.items() if a.get(k) != b.get(k))
