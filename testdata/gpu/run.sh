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
#   sweep: batch-1 geometries of the repacked formats' kernels (SWEEP), the best
#       per format written to BEST_ENV (later steps/calls use it with USE_BEST=1);
#   realmodel: the reference model (MODEL_PARTS) quantised there to REAL_TYPES,
#       each verified on the GPU against the CPU (quern verify --device cuda).
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

# A geometry an earlier call of the same warm machine chose (step "sweep"), for
# the steps after it: BEST_ENV (environment assignments, one line).
if [ -n "${USE_BEST:-}" ] && [ -s "${BEST_ENV:-/tmp/quern-best.env}" ]; then
  best=$(cat "${BEST_ENV:-/tmp/quern-best.env}")
  echo "using the chosen geometry: $best"
  export $best
fi

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
  [ "$mix" = none ] && continue
  echo "-- stack llama-8b $mix"
  timeout ${T_STACK:-90} "$DIR/quern" bench --device cuda --kernels --stack llama-8b --types "$mix" || status=1
done 2>&1 | tee -a "$OUT/variants.txt"
fi

if want sweep; then
step "batch-1 geometry sweep of the repacked formats"
# Each entry of SWEEP: environment assignments joined by ':'; every entry times
# the repacked formats (SWEEP_TYPES) at batch 1 on the three shapes. sweep.py
# prints the table and writes the best rows x units per format (lowest summed
# time) to BEST_ENV for later steps and calls (USE_BEST=1).
sw="$OUT/sweep"
mkdir -p "$sw"
i=0
for v in ${SWEEP:-"QUERN_CUDA_MMV_KERNEL=block" "QUERN_CUDA_MMW_FUSE=0" "QUERN_CUDA_MMW_ROWS=1:QUERN_CUDA_MMW_UNITS=2"}; do
  i=$((i + 1))
  echo "-- $i ${v//:/ }"
  echo "${v//:/ }" >"$sw/v$i.env"
  env ${v//:/ } timeout ${T_SWEEP:-40} "$DIR/quern" bench --device cuda --kernels --json --batches 1 \
    --types "${SWEEP_TYPES:-Q4_0,Q4_K,Q6_K,Q8_0,Q5_0}" >"$sw/v$i.json" || status=1
done 2>&1 | tail -60
python3 "$DIR/sweep.py" "$sw" "${BEST_ENV:-/tmp/quern-best.env}" | tee "$OUT/sweep.txt" || status=1
rm -rf "$sw"
fi

if want ncu; then
step "Nsight Compute on single launches"
# NCU_CASES: TYPE:INxOUT:KERNEL (regex of the kernel's name); the first launch of
# that kernel in a one-case benchmark is profiled (clocks left alone).
for spec in ${NCU_CASES:-"Q4_K:4096x14336:mmwf_b1" "Q4_0:4096x14336:mmwf_b1"}; do
  IFS=: read -r t shp k <<<"$spec"
  echo "-- ncu $t $shp $k"
  timeout ${T_NCU:-90} ncu --clock-control none -k "regex:^$k\$" -c 1 --section SpeedOfLight \
    --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    "$DIR/quern" bench --device cuda --kernels --types "$t" --shapes "$shp" --batches 1 || status=1
done 2>&1 | grep -v '^==PROF==' | tee -a "$OUT/${NCU_FILE:-sweep.txt}"
fi

if want realmodel; then
step "the reference model on the GPU against the CPU"
# MODEL_PARTS: a glob of the parts of one GGUF (split here, carried over
# several calls of the warm machine), joined in order; then quern quantizes it
# to each of REAL_TYPES (--allow-requantize: the reference's weights lie on this
# file's Q4_1 grid) and verifies each file on the GPU against itself on the CPU
# over REAL_CHUNKS chunks of REAL_CTX tokens of REAL_TEXT.
src=/dev/shm/real-src.gguf
cat ${MODEL_PARTS:-$DIR/../model/part-*} >"$src" && ls -l "$src" && sha256sum "$src" || status=1
for t in ${REAL_TYPES:-Q8_0 Q4_K_M}; do
  f=/dev/shm/real-$t.gguf
  echo "-- $t"
  timeout ${T_QUANT:-120} "$DIR/quern" quantize "$src" -o "$f" --type "$t" --allow-requantize -q 2>&1 | tail -3 || status=1
  timeout ${T_REAL:-180} "$DIR/quern" verify "$f" -r "$f" --device cuda --text "${REAL_TEXT:-$DIR/wiki.test.raw}" \
    --ctx ${REAL_CTX:-512} --chunks ${REAL_CHUNKS:-1} --max-kld 1e-3 --min-top1 0.99 --json "$OUT/verify-$t.json" -q 2>&1 | tail -40 || status=1
done 2>&1 | tee "$OUT/realmodel.txt"
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
