#!/usr/bin/env bash
# Issue 6 on a real GPU, one prepared run (a few minutes): with --device cuda,
#   1. N steps + --resume + M steps against N+M at once (bit-identical, or the largest difference);
#   2. an exploding run (--lr 1e38): rollbacks, then a one-line stop naming the step, no bad checkpoint;
#   3. SIGTERM mid-run: exit 143, `last` saved and loadable, no temporary files.
# Runs from the tree with PYTHONPATH=. Usage (DEVICE=cpu runs the same steps here):
#   OUT=$OUT bash bench/gpu_faults.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/charrnn-gpu-faults}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
W=$(mktemp -d)
LOG="$OUT/gpu_faults.log"
exec > >(tee -a "$LOG") 2>&1
echo "== charrnn fault checks on $DEVICE $(date -u +%FT%TZ)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
"$PY" -c "import numba, numpy; print('numba', numba.__version__, 'numpy', numpy.__version__)"
"$PY" -c "
import random; r = random.Random(0); w = ['the ', 'cat ', 'sat ', 'on ', 'a ', 'mat.\n', 'dog ', 'ran ', 'far, ']
open('$W/t.txt', 'w').write(''.join(r.choice(w) for _ in range(60000)))"
run() { "$PY" -m charrnn "$@"; }
F=(--hidden 64 --layers 2 --seq-len 32 --batch-size 16 --device "$DEVICE" --dropout 0.1 --val-every 10
   --lr-plateau 0.5 --max-epochs 2)

echo "== 1. exact resume: 25 steps + resume to 60 vs 60 at once"
run train "$W/t.txt" "${F[@]}" --max-steps 60 --out "$W/whole" 2>&1 | tail -1
run train "$W/t.txt" "${F[@]}" --max-steps 25 --out "$W/part" 2>&1 | tail -1
run train "$W/t.txt" --resume "$W/part" --max-steps 60 --device "$DEVICE" 2>&1 | tail -1
"$PY" -c "
import numpy as np; from charrnn import checkpoint as c
a, b = c.load('$W/whole/last.safetensors'), c.load('$W/part/last.safetensors')
same = np.array_equal(a.params.flat, b.params.flat)
print('steps', a.progress['step'], b.progress['step'], '| weights bit-identical:', same,
      '| max |diff|', float(np.abs(a.params.flat - b.params.flat).max()),
      '| moments identical:', all(np.array_equal(a.optim_state[k], b.optim_state[k]) for k in a.optim_state))"

echo "== 2. exploding run: --lr 1e38 --max-nan-retries 2"
run train "$W/t.txt" --hidden 16 --layers 1 --seq-len 16 --batch-size 8 --device "$DEVICE" --lr 1e38 \
    --max-nan-retries 2 --val-every 5 --out "$W/nan" 2>&1 | tail -4
echo "exit ${PIPESTATUS[0]}"
"$PY" -c "
import glob, numpy as np; from charrnn import checkpoint as c
fs = glob.glob('$W/nan/*.safetensors'); print('checkpoints', len(fs), 'all finite:', all(np.isfinite(c.load(f).params.flat).all() for f in fs))"

echo "== 3. SIGTERM mid-run"
"$PY" -m charrnn train "$W/t.txt" "${F[@]}" --max-epochs 100 --out "$W/sig" 2>"$W/sig.err" &
pid=$!
for _ in $(seq 600); do [ -s "$W/sig/metrics.jsonl" ] && break; sleep 0.1; done
sleep 1
t0=$(date +%s.%N); kill -TERM $pid; wait $pid; code=$?; t1=$(date +%s.%N)
echo "exit $code after $("$PY" -c "print(round($t1 - $t0, 2))") s; $(tail -1 "$W/sig.err")"
echo "files: $(ls -A "$W/sig" | tr '\n' ' ')"
"$PY" -c "from charrnn import checkpoint as c; k = c.load('$W/sig/last.safetensors'); print('last loads: step', k.progress['step'], k.metrics)"
echo "== done $(date -u +%FT%TZ)"
