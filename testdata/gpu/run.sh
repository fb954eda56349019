#!/usr/bin/env bash
# The GPU check of the CUDA backend, in one call of the device tool: runs the
# carried test executables and the carried release binary (it builds nothing),
# then the PyTorch peers, and writes everything under $OUT.
#
#   bash DIR/run.sh    DIR is what testdata/gpu/stage.sh DIR made: quern,
#                      cuda_kernels, cuda_model, cuda_decode, runtime_lib (test
#                      executables from `cargo test --release --no-run -p
#                      quern-runtime`), run.sh, torch_gemv.py, summary.py
#
# Steps (each logged, each limited in time so the call ends inside its limit;
# T_* variables set the limits, KERNEL_TYPES limits step 2 to some formats,
# VARIANTS / VARIANT_TYPES / STACK_MIXES choose step 3b's runs):
#   1. GPU tests with QUERN_REQUIRE_CUDA=1 (a missing device fails them);
#   2. quern bench --device cuda --kernels --json;
#   3. torch_gemv.py (int4 weight-only and bf16 peers, same shapes and method);
#   3b. the benchmark for other kernel geometries and the older kernels, on the
#       repacked formats, and the weight products of one Llama-3-8B-shaped decode
#       step (--stack) for a few mixes (variants.txt);
#   4. summary.md from 2 and 3;
#   5. compute-sanitizer --tool memcheck over the kernel tests (MEMCHECK_BIN
#      names another test executable of DIR);
#   6. the device-resident forward pass on Llama-3-8B-shaped synthetic models:
#      `quern bench --synthetic llama-8b --type T --device cuda` for each T of
#      DECODE_TYPES (pp DECODE_PP, tg DECODE_TG, DECODE_REPS repetitions), and
#      once without the CUDA graph (QUERN_CUDA_GRAPH=0, the first type), and
#      once per entry of DECODE_VARIANTS (environment assignments joined by
#      ':', e.g. DECODE_VARIANTS="QUERN_CUDA_ATTN_CHUNK=16 QUERN_CUDA_DECODE_SKIP=attn").
# STEPS (default "tests kernels torch variants summary memcheck decode") picks
# the steps; a test executable whose T_* limit is 0 is skipped.
set -u -o pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
export QUERN_REQUIRE_CUDA=1
export QUERN_CUDA_CACHE=${QUERN_CUDA_CACHE:-/tmp/quern-cuda-cache}
export PYTHONUNBUFFERED=1
status=0
step() { echo "== $* ($(date -u +%H:%M:%S))"; }
STEPS=${STEPS:-"tests kernels torch variants summary memcheck decode"}
want() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# A test executable, unless its limit is 0.
run_test() {
  local limit=$1; shift
  [ "$limit" = 0 ] && { echo "skipped $1"; return 0; }
  timeout "$limit" "$@"
}

step "machine"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
  nvcc --version 2>/dev/null | tail -2
  uname -a
} 2>&1 | tee "$OUT/machine.txt"

if want tests; then
step "GPU tests"
: >"$OUT/tests.log"
run_test ${T_KERNELS_TEST:-240} "$DIR/cuda_kernels" --test-threads=1 2>&1 | tee -a "$OUT/tests.log" || status=1
run_test ${T_MODEL_TEST:-120} "$DIR/cuda_model" --test-threads=1 2>&1 | tee -a "$OUT/tests.log" || status=1
run_test ${T_LIB_TEST:-120} "$DIR/runtime_lib" cuda:: --test-threads=1 2>&1 | tee -a "$OUT/tests.log" || status=1
run_test ${T_DECODE_TEST:-120} "$DIR/cuda_decode" --test-threads=1 2>&1 | tee -a "$OUT/tests.log" || status=1
fi

if want kernels; then
step "kernel benchmark"
# The SM clock every 200 ms while the benchmark runs (clocks are only read).
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw --format=csv -lms 200 >"$OUT/clocks.csv" 2>&1 &
smi=$!
timeout ${T_BENCH:-200} "$DIR/quern" bench --device cuda --kernels --json ${KERNEL_TYPES:+--types "$KERNEL_TYPES"} >"$OUT/kernels.json" || status=1
kill $smi 2>/dev/null
fi

if want torch; then
step "PyTorch peers"
timeout ${T_TORCH:-180} python3 "$DIR/torch_gemv.py" "$OUT/torch_gemv.json" 2>&1 | tail -30 || status=1
fi

if want variants; then
step "geometry variants and the decode-step stack"
# Other kernel geometries on the formats with repacked kernels, and the older
# kernels over the file layout (QUERN_CUDA_PACKED=0), for comparison; the default
# geometry is the run above. Each variant: environment assignments.
for v in ${VARIANTS:-"QUERN_CUDA_PACKED=0" "QUERN_CUDA_MMV_ROWS=1" "QUERN_CUDA_MMV_ROWS=4" "QUERN_CUDA_MMV_UNROLL=4" "QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_ROWS=4"}; do
  echo "-- $v"
  env $v timeout ${T_VARIANT:-60} "$DIR/quern" bench --device cuda --kernels --types "${VARIANT_TYPES:-Q4_0,Q4_K,Q6_K,Q8_0}" || status=1
done 2>&1 | tee "$OUT/variants.txt"
# The weight products of one Llama-3-8B-shaped decode step as one CUDA graph.
for mix in ${STACK_MIXES:-Q4_K_M Q4_0 Q8_0}; do
  echo "-- stack llama-8b $mix"
  timeout ${T_STACK:-90} "$DIR/quern" bench --device cuda --kernels --stack llama-8b --types "$mix" || status=1
done 2>&1 | tee -a "$OUT/variants.txt"
fi

if want summary; then
step "summary"
python3 "$DIR/summary.py" "$OUT/kernels.json" "$OUT/torch_gemv.json" | tee "$OUT/summary.md" || status=1
fi

if want memcheck; then
step "compute-sanitizer memcheck"
if command -v compute-sanitizer >/dev/null; then
  timeout "${MEMCHECK_TIMEOUT:-200}" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$DIR/${MEMCHECK_BIN:-cuda_kernels}" --test-threads=1 ${MEMCHECK_FILTER:-} 2>&1 | tail -40 | tee "$OUT/memcheck.log"
  rc=${PIPESTATUS[0]}
  echo "memcheck exit status $rc" | tee -a "$OUT/memcheck.log"
  [ "$rc" = 0 ] || status=1
else
  echo "compute-sanitizer not found" | tee "$OUT/memcheck.log"
  status=1
fi
fi

if want decode; then
step "device-resident decode, synthetic Llama-3-8B shape"
# The synthetic model's file goes to memory (/dev/shm) when it exists.
sdir=${SYNTH_DIR:-/dev/shm}
[ -d "$sdir" ] || sdir=/tmp
types=${DECODE_TYPES:-"Q4_K_M Q4_0 Q8_0"}
# The device tool returns at most 8 files: with every step, this output joins
# variants.txt instead of adding a ninth.
dlog="$OUT/decode.txt"
want variants && dlog="$OUT/variants.txt"
for t in $types; do
  echo "-- synthetic llama-8b $t"
  timeout ${T_DECODE:-120} "$DIR/quern" bench --synthetic llama-8b --type "$t" --device cuda \
    --synthetic-dir "$sdir" -p ${DECODE_PP:-512} -n ${DECODE_TG:-128} -r ${DECODE_REPS:-3} || status=1
done 2>&1 | tee -a "$dlog"
first=${types%% *}
echo "-- synthetic llama-8b $first, QUERN_CUDA_GRAPH=0 (kernels launched one by one)" | tee -a "$dlog"
QUERN_CUDA_GRAPH=0 timeout ${T_DECODE:-120} "$DIR/quern" bench --synthetic llama-8b --type "$first" --device cuda \
  --synthetic-dir "$sdir" -p 0 -n ${DECODE_TG:-128} -r ${DECODE_REPS:-3} 2>&1 | tee -a "$dlog" || status=1
# Variants of the first type's decode, each a list of environment assignments
# (DECODE_VARIANTS), e.g. QUERN_CUDA_ATTN_CHUNK=16, or QUERN_CUDA_DECODE_SKIP=attn
# to see what a kernel group costs (the logits are then wrong, only the time counts).
for v in ${DECODE_VARIANTS:-}; do
  echo "-- synthetic llama-8b $first, ${v//:/ }" | tee -a "$dlog"
  env ${v//:/ } timeout ${T_DECODE:-120} "$DIR/quern" bench --synthetic llama-8b --type "$first" --device cuda \
    --synthetic-dir "$sdir" -p 0 -n ${DECODE_TG:-128} -r ${DECODE_REPS:-3} --no-floor 2>&1 | tee -a "$dlog" || status=1
done
fi
step "done, status $status"
exit $status
