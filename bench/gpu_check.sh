#!/usr/bin/env bash
# The GPU check of issue 5, one prepared run for a lent GPU machine (under 5 minutes):
#   1. the CUDA backend's tests on the real device (tests/test_cuda_backend.py, gpu ones included);
#   2. timings: training 2x512 T100 B64 and sampling at batch 1 and 64, charrnn vs PyTorch/cuDNN,
#      same run (bench/gpu_bench.py); a JSON summary goes to $OUT/gpu_bench.json.
# Runs from the tree with PYTHONPATH=. (no install needed). Usage:
#   bash bench/gpu_check.sh            # on the GPU machine; OUT defaults to /tmp/charrnn-gpu-check
#   bash bench/gpu_check.sh --smoke    # here: the same steps under the CUDA simulator, tiny shapes
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/charrnn-gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
if [ "$SMOKE" = 1 ]; then
    export NUMBA_ENABLE_CUDASIM=1
    [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
fi
status=0
t0=$(date +%s)
echo "== charrnn GPU check (smoke=$SMOKE) $(date -u +%FT%TZ)" | tee "$OUT/gpu_check.log"
if [ "$SMOKE" = 0 ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/gpu_check.log"
fi
"$PY" -c "import numba, numpy; from numba import cuda; print('numba', numba.__version__, 'numpy', numpy.__version__, 'cuda available', cuda.is_available())" 2>&1 | tee -a "$OUT/gpu_check.log"

echo "== tests" | tee -a "$OUT/gpu_check.log"
if [ "$SMOKE" = 1 ]; then
    sel=(-m gpu)              # the simulator suite runs in CI; here only the path is exercised
else
    sel=()
fi
timeout 200 "$PY" -m pytest -q -p no:cacheprovider -W ignore::RuntimeWarning "${sel[@]}" tests/test_cuda_backend.py 2>&1 \
    | tee -a "$OUT/gpu_check.log" | tail -25
[ "${PIPESTATUS[0]}" = 0 ] || { echo "tests FAILED" | tee -a "$OUT/gpu_check.log"; status=1; }

echo "== timings" | tee -a "$OUT/gpu_check.log"
smoke_flag=()
[ "$SMOKE" = 1 ] && smoke_flag=(--smoke)
timeout 240 "$PY" bench/gpu_bench.py --json "$OUT/gpu_bench.json" "${smoke_flag[@]}" 2>&1 | tee -a "$OUT/gpu_check.log"
[ "${PIPESTATUS[0]}" = 0 ] || { echo "timings FAILED" | tee -a "$OUT/gpu_check.log"; status=1; }
echo "== done in $(( $(date +%s) - t0 )) s, status $status; summary in $OUT/gpu_bench.json" | tee -a "$OUT/gpu_check.log"
exit $status
