#!/usr/bin/env bash
# Tensor-core slice, device call 3 (final binary: per-format thresholds, row
# addresses formed at each load, AWQ decode test): the GPU tests, memcheck over
# the tensor-core test (settings 0 and 6) and the AWQ decode test, the kernels
# at batches 4-64, synthetic 8B prefill/decode (and the prefill with 32 tokens
# per tensor-core block, and without the K split), Nsight Compute on one
# tensor-core launch (Q4_0 4096x14336, 64 rows).
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
STEPS="tests" T_KERNELS_TEST=150 T_MODEL_TEST=30 T_LIB_TEST=0 T_DECODE_TEST=40 bash "$D/run.sh"
st=$?
{
  echo "-- memcheck (tensor-core test, settings 0 and 6)"
  QUERN_REQUIRE_CUDA=1 QUERN_TEST_MMA_SETTINGS=0,6 timeout 50 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$D/cuda_kernels" --test-threads=1 tensor_core 2>&1 | tail -12
  echo "memcheck exit status ${PIPESTATUS[0]}"
  echo "-- memcheck (AWQ decode test)"
  QUERN_REQUIRE_CUDA=1 timeout 40 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$D/cuda_decode" --test-threads=1 awq 2>&1 | tail -12
  echo "memcheck exit status ${PIPESTATUS[0]}"
} 2>&1 | tee "$OUT/memcheck.log"
{
  echo "-- kernels default"
  timeout 60 "$D/quern" bench --device cuda --kernels --types "Q4_0,Q5_0,Q8_0,Q4_K,Q6_K" --batches 4,8,16,64 || st=1
} 2>&1 | tee "$OUT/kernels.txt"
{
  echo "-- synthetic llama-8b Q4_K_M default"
  timeout 60 "$D/quern" bench --synthetic llama-8b --type Q4_K_M --device cuda --synthetic-dir /dev/shm -p 512 -n 128 -r 2 || st=1
  for e in "QUERN_CUDA_MMA_BN=32" "QUERN_CUDA_MMA_SPLIT=1"; do
    echo "-- synthetic llama-8b Q4_K_M $e (prefill only)"
    env $e timeout 40 "$D/quern" bench --synthetic llama-8b --type Q4_K_M --device cuda --synthetic-dir /dev/shm -p 512 -n 0 -r 2 || st=1
  done
  for t in Q4_0 Q8_0; do
    echo "-- synthetic llama-8b $t default (prefill only)"
    timeout 40 "$D/quern" bench --synthetic llama-8b --type $t --device cuda --synthetic-dir /dev/shm -p 512 -n 0 -r 2 || st=1
  done
} 2>&1 | tee "$OUT/decode.txt"
{
  echo "-- ncu Q4_0 4096x14336 batch 64 mmq_n64"
  timeout 60 ncu --clock-control none -k "regex:^mmq_n64\$" -c 1 --section SpeedOfLight --section Occupancy \
    --section LaunchStats --section WarpStateStats --section ComputeWorkloadAnalysis \
    "$D/quern" bench --device cuda --kernels --types Q4_0 --shapes 4096x14336 --batches 64 2>&1 | grep -v '^==PROF=='
} 2>&1 | tee "$OUT/ncu.txt"
echo "mma3 status $st"
exit $st
