#!/usr/bin/env bash
# The pipelined GEMV kernels (mmp_*, packed.cu: bulk copies into shared memory,
# several stages in flight): the kernel tests (every path, outputs poisoned),
# the decode tests with the default and with the first copies issued before
# the PDL wait (QUERN_CUDA_MMP_EARLY=1), memcheck over the repacked-format test,
# then per-format GEMV times, the 8B weight-product stack and synthetic 8B
# decode for the pipelined kernels against the block kernels, and a few stage
# geometries on the stack. About 5 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qp
tar xzf "$D/bin.tgz" -C /dev/shm/qp
B=/dev/shm/qp/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache QUERN_REQUIRE_CUDA=1
st=0
nvidia-smi --query-gpu=name,driver_version,clocks.max.mem,clocks.max.sm --format=csv,noheader
timeout 150 "$B/cuda_kernels" --test-threads=1 >"$OUT/kernels.log" 2>&1 || st=1
echo "cuda_kernels: $(grep -h "test result\|panicked" "$OUT/kernels.log" | tr '\n' ' ')"
for early in 0 1; do
  QUERN_CUDA_MMV_KERNEL=pipe QUERN_CUDA_MMP_EARLY=$early timeout 80 "$B/cuda_decode" --test-threads=1 >"$OUT/decode-early$early.log" 2>&1 || st=1
  echo "cuda_decode, early $early: $(grep -h "test result\|panicked" "$OUT/decode-early$early.log" | tr '\n' ' ')"
done
timeout 60 "$B/cuda_model" --test-threads=1 >"$OUT/model.log" 2>&1 || st=1
echo "cuda_model: $(grep -h "test result\|panicked" "$OUT/model.log" | tr '\n' ' ')"
timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_kernels" \
  --test-threads=1 large_shape >"$OUT/memcheck.log" 2>&1 || st=1
grep -h "test result\|ERROR SUMMARY" "$OUT/memcheck.log"
{
  for k in pipe block; do
    echo "-- kernels, QUERN_CUDA_MMV_KERNEL=$k"
    QUERN_CUDA_MMV_KERNEL=$k timeout 60 "$B/quern" bench --device cuda --kernels --types Q4_0,Q4_K,Q6_K,Q8_0 --batches 1,4 2>&1 || st=1
  done
  for v in "QUERN_CUDA_MMV_KERNEL=block" "QUERN_CUDA_MMV_KERNEL=pipe" "QUERN_CUDA_MMV_KERNEL=pipe:QUERN_CUDA_MMP_EARLY=1" \
    "QUERN_CUDA_MMV_KERNEL=pipe:QUERN_CUDA_MMP_STAGE_KB=8" "QUERN_CUDA_MMV_KERNEL=pipe:QUERN_CUDA_MMP_STAGES=6" \
    "QUERN_CUDA_MMV_KERNEL=pipe:QUERN_CUDA_MMP_BPS=1"; do
    echo "-- stack llama-8b Q4_K_M, $v"
    env ${v//:/ } timeout 40 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M 2>&1 | tail -1 || st=1
  done
  for v in "QUERN_CUDA_MMV_KERNEL=block" "QUERN_CUDA_MMV_KERNEL=pipe"; do
    for ty in Q4_K_M Q4_0; do
      echo "-- synthetic llama-8b $ty, $v"
      env ${v//:/ } timeout 50 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
        --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
    done
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
