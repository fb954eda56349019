#!/usr/bin/env bash
# Programmatic dependent launch as committed (every kernel waits first thing;
# single-token steps with the attribute, prefill without) and calibrate's GPU
# path: the GPU tests (cuda_decode twice), memcheck over three decode tests,
# then batch-1 kernels, the 8B weight-product stack and synthetic 8B
# decode/prefill, each with PDL on and off (QUERN_CUDA_PDL=0). About 8 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qs4
tar xzf "$D/bin.tgz" -C /dev/shm/qs4
B=/dev/shm/qs4/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
STEPS="tests" T_KERNELS_TEST=170 T_MODEL_TEST=60 T_LIB_TEST=0 T_DECODE_TEST=70 bash "$B/run.sh" >"$OUT/run.log" 2>&1
st=$?
grep -E "^test |test result|panicked" "$OUT/run.log"
echo "-- cuda_decode again"
QUERN_REQUIRE_CUDA=1 timeout 60 "$B/cuda_decode" --test-threads=1 2>&1 | grep -E "FAILED|panicked|test result" || st=1
echo "-- memcheck (cuda_decode: q4_k, awq, q8_0)"
QUERN_REQUIRE_CUDA=1 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$B/cuda_decode" --test-threads=1 q4_k awq q8_0 >"$OUT/memcheck.log" 2>&1
echo "memcheck exit status $?"; tail -3 "$OUT/memcheck.log"
{
  for e in "QUERN_CUDA_PDL=1" "QUERN_CUDA_PDL=0"; do
    echo "-- kernels $e"
    env $e timeout 60 "$B/quern" bench --device cuda --kernels --types Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K,Q6_K --batches 1 || st=1
    for mix in Q4_K_M Q4_0 Q8_0; do
      echo "-- stack $mix $e"
      env $e timeout 40 "$B/quern" bench --device cuda --kernels --stack llama-8b --types $mix || st=1
    done
  done
} 2>&1 | tee "$OUT/kernels.txt"
{
  for t in Q4_K_M Q4_0 Q8_0; do
    for e in "QUERN_CUDA_PDL=1" "QUERN_CUDA_PDL=0"; do
      echo "-- synthetic llama-8b $t $e"
      env $e timeout 45 "$B/quern" bench --synthetic llama-8b --type $t --device cuda --synthetic-dir /dev/shm \
        -p 512 -n 128 -r 2 || st=1
      rm -f /dev/shm/quern-synthetic-*
    done
  done
} 2>&1 | tee "$OUT/decode.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv >"$OUT/machine.txt" 2>&1
echo "final status $st"
exit $st
