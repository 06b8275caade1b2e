"""charrnn/machine.py: the numerics signature names what decides float results here."""
import json
import os
import re
import subprocess
import sys

from charrnn import machine


def test_signature_names_the_cpu_vector_width_blas_and_compilers():
    sig = machine.signature()
    assert set(sig) == {"vendor", "llvm_cpu", "simd", "blas", "numpy", "numba"}
    assert sig["simd"] == sorted(sig["simd"]) and all(re.match(r"(sse|ssse|avx|fma|f16c|amx|neon|sve|asimd)", f)
                                                      for f in sig["simd"])
    assert set(sig["blas"]) == {"library", "core", "threads"} and sig["blas"]["threads"] >= 1
    assert json.loads(json.dumps(sig)) == sig          # plain data: it is stored in fixture files


def test_paths_given_are_part_of_the_signature_and_change_its_id():
    a, b = machine.signature({"lanes": 1}), machine.signature({"lanes": 2})
    assert a["paths"] == {"lanes": 1} and machine.signature_id(a) != machine.signature_id(b)
    assert machine.signature_id(a) == machine.signature_id(machine.signature({"lanes": 1}))


def test_signature_id_is_a_safe_file_name_led_by_readable_parts():
    sig = dict(machine.signature(), vendor="Some Vendor/../x", llvm_cpu="a b")
    sid = machine.signature_id(sig)
    assert re.fullmatch(r"[a-z0-9-]+", sid) and sid.startswith("somevendorx-ab-")


def test_numbas_cpu_overrides_are_what_the_signature_reports():
    """NUMBA_CPU_NAME / NUMBA_CPU_FEATURES change what Numba compiles for, so they change the
    signature (bench/fixture_spread.py emulates other machines this way)."""
    code = "import json; from charrnn import machine; print(json.dumps(machine.signature()))"
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="+avx,+avx2,+fma,-avx512f,+sse2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    sig = json.loads(out.stdout)
    assert sig["llvm_cpu"] == "haswell" and sig["simd"] == ["avx", "avx2", "fma", "sse2"]


def test_distance_weighs_vector_width_and_blas_above_the_rest():
    sig = machine.signature()
    assert machine.distance(sig, sig) == 0
    other_width = dict(sig, simd=["sse2"])
    other_vendor = dict(sig, vendor="SomeoneElse")
    assert machine.distance(sig, other_width) > machine.distance(sig, other_vendor) > 0


def test_describe_is_one_line_naming_the_blas_kernels():
    line = machine.describe()
    assert "\n" not in line and "BLAS threads" in line
