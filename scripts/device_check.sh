#!/usr/bin/env bash
# What a GPU or Mac session runs in one go (<= 8 minutes on an H200 or an M-series Mac), results under one folder:
#   1. env.txt        torch / transformers / device versions
#   2. tests.txt      the tests of the numerics (kernels, whole-forward error, doctor)
#   3. doctor.txt/.json  lm-eval-streaming doctor on the device in float16 (no weights)
#   4. benchmark.txt/.json  a Pythia-6.9B-shaped float16 model with random weights: dense chunked, dense in one
#                     call, the project's kernel, streaming_llm 4+252, kernel checks, whole-forward error per row
#   5. speed.txt      speed --only speed,numerics on the same shape (incl. the whole-forward shadow's cost)
#   6. summary.txt    one line per step: status and seconds
# Usage: scripts/device_check.sh [OUT_DIR]   (default device_check_<device>)
# Environment: DEVICE (default: cuda if available, else mps, else cpu), DTYPE (float16), SHAPE (pythia-6.9b),
# TOKENS (2000), LENGTHS (doctor lengths; default its own), SKIP_TESTS=1, FORCE=1 (run the device steps on a CPU
# too; with a small SHAPE this tests the script), LIMIT_SCALE (multiplies every step's time limit; default 1).
# Without a GPU or MPS (and no FORCE) the device steps are skipped.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=${DEVICE:-$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu')")}
DTYPE=${DTYPE:-float16}
SHAPE=${SHAPE:-pythia-6.9b}
TOKENS=${TOKENS:-2000}
OUT=${1:-device_check_$DEVICE}
mkdir -p "$OUT"
: > "$OUT/summary.txt"
# macOS has no `timeout` unless coreutils is installed (gtimeout); without either the steps run unlimited
TIMEOUT=$(command -v timeout || command -v gtimeout || true)

step() {  # step NAME LIMIT_SECONDS OUTFILE command...
    local name=$1 limit=$(( $2 * ${LIMIT_SCALE:-1} )) file=$3; shift 3
    local start=$SECONDS
    ${TIMEOUT:+$TIMEOUT "$limit"} "$@" > "$OUT/$file" 2>&1
    local rc=$?
    local status=ok; [ $rc -eq 124 ] && status="timed out after ${limit}s"; [ $rc -ne 0 ] && [ $rc -ne 124 ] && status="failed (exit $rc)"
    echo "$name: $status, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}
skip() { echo "$1: skipped ($2)" | tee -a "$OUT/summary.txt"; }

step env 60 env.txt $PY -c "
import platform, torch, transformers
print('torch', torch.__version__, 'transformers', transformers.__version__, platform.platform())
print('cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0), 'mps', torch.backends.mps.is_available())
print('device', '$DEVICE', 'dtype', '$DTYPE', 'shape', '$SHAPE', 'tokens', '$TOKENS')"

if [ "${SKIP_TESTS:-0}" = 1 ]; then skip tests "SKIP_TESTS=1"; else
    step tests 120 tests.txt env OMP_NUM_THREADS=4 $PY -m pytest -q -m "not slow" tests/test_kernels.py \
        tests/test_whole_forward.py tests/test_doctor.py
fi

if [ "$DEVICE" = cpu ] && [ "${FORCE:-0}" != 1 ]; then
    for s in doctor benchmark speed; do skip $s "no GPU or MPS here"; done
else
    step doctor 100 doctor.txt $PY -m lm_eval_streaming.cli doctor --device "$DEVICE" --dtype "$DTYPE" \
        --shape "$SHAPE" ${LENGTHS:+--lengths "$LENGTHS"} --output "$OUT/doctor.json"
    step benchmark 150 benchmark.txt $PY scripts/device_benchmark.py --shape "$SHAPE" --device "$DEVICE" \
        --dtype "$DTYPE" --tokens "$TOKENS" --output "$OUT/benchmark.json"
    step speed 90 speed.txt $PY -m lm_eval_streaming.cli speed --shape "$SHAPE" --device "$DEVICE" \
        --dtype "$DTYPE" --tokens "$TOKENS" --steady_tokens $(( TOKENS / 2 < 200 ? TOKENS / 2 : 200 )) \
        --only speed,numerics
fi
echo "results in $OUT"
