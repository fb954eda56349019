#!/usr/bin/env bash
# Programmatic dependent launch (launch.rs, common.cu): the GPU tests with it on
# (the default on sm_90), then kernels, the 8B weight-product stack and synthetic
# 8B decode/prefill with it on and off (QUERN_CUDA_PDL=0). About 6 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
which nsys ncu compute-sanitizer > "$OUT/tools.txt" 2>&1
STEPS="tests" T_KERNELS_TEST=170 T_MODEL_TEST=40 T_LIB_TEST=90 T_DECODE_TEST=70 bash "$D/run.sh" >"$OUT/run.log" 2>&1
st=$?
grep -E "^test |test result|panicked|status" "$OUT/run.log"
{
  for e in "QUERN_CUDA_PDL=1" "QUERN_CUDA_PDL=0"; do
    echo "-- kernels $e"
    env $e timeout 40 "$D/quern" bench --device cuda --kernels --types Q4_0,Q4_K,Q6_K,Q8_0 --batches 1 || st=1
    for mix in Q4_K_M Q4_0; do
      echo "-- stack $mix $e"
      env $e timeout 40 "$D/quern" bench --device cuda --kernels --stack llama-8b --types $mix || st=1
    done
  done
} 2>&1 | tee "$OUT/kernels.txt"
{
  for t in Q4_K_M Q4_0 Q8_0; do
    for e in "QUERN_CUDA_PDL=1" "QUERN_CUDA_PDL=0"; do
      echo "-- synthetic llama-8b $t $e"
      env $e timeout 45 "$D/quern" bench --synthetic llama-8b --type $t --device cuda --synthetic-dir /dev/shm \
        -p 512 -n 128 -r 2 || st=1
      rm -f /dev/shm/quern-synthetic-*
    done
  done
} 2>&1 | tee "$OUT/decode.txt"
echo "-- memcheck (cuda_decode: q4_k, awq, q8_0; launches with the PDL attribute)"
QUERN_REQUIRE_CUDA=1 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$D/cuda_decode" --test-threads=1 q4_k awq q8_0 > "$OUT/memcheck.log" 2>&1
echo "memcheck exit status $?"; tail -6 "$OUT/memcheck.log"
echo "final status $st"
exit $st
