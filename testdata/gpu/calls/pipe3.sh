#!/usr/bin/env bash
# After the shared-memory attribute fix: kernel tests with the block default and
# the pipe settings, decode tests on pipe, the 8B weight-product stack and GEMV
# times pipe vs block, stacked q/k/v and gate/up vs one product per matrix,
# then synthetic 8B decode (AWQ and Q4_K_M) pipe vs block. About 5 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qp
tar xzf "$D/bin.tgz" -C /dev/shm/qp
B=/dev/shm/qp/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache QUERN_REQUIRE_CUDA=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
st=0
timeout 150 "$B/cuda_kernels" --test-threads=1 >"$OUT/kernels.log" 2>&1 || st=1
echo "cuda_kernels: $(grep -h "test result\|panicked" "$OUT/kernels.log" | tr '\n' ' ')"
timeout 80 "$B/cuda_decode" --test-threads=1 >"$OUT/decode.log" 2>&1 || st=1
echo "cuda_decode: $(grep -h "test result\|panicked" "$OUT/decode.log" | tr '\n' ' ')"
QUERN_CUDA_MMV_KERNEL=pipe timeout 80 "$B/cuda_decode" --test-threads=1 >"$OUT/decode-pipe.log" 2>&1 || st=1
echo "cuda_decode, pipe: $(grep -h "test result\|panicked" "$OUT/decode-pipe.log" | tr '\n' ' ')"
{
  echo "-- stack llama-8b Q4_K_M, block, QUERN_CUDA_STACK=0"
  QUERN_CUDA_STACK=0 timeout 40 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M 2>&1 | tail -1 || st=1
  for k in pipe block; do
    echo "-- stack llama-8b Q4_K_M, $k"
    QUERN_CUDA_MMV_KERNEL=$k timeout 40 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M 2>&1 | tail -1 || st=1
    QUERN_CUDA_MMV_KERNEL=$k timeout 60 "$B/quern" bench --device cuda --kernels --types Q4_0,Q4_K,Q5_0 --batches 1 2>&1 | tail -10 || st=1
  done
  for run in "Q4_K_M QUERN_CUDA_MMV_KERNEL=block" "Q4_K_M QUERN_CUDA_MMV_KERNEL=block QUERN_CUDA_STACK=0" \
    "Q4_K_M QUERN_CUDA_MMV_KERNEL=pipe" "AWQ QUERN_CUDA_MMV_KERNEL=block" "AWQ QUERN_CUDA_MMV_KERNEL=pipe"; do
    set -- $run
    ty=$1; shift
    echo "-- synthetic llama-8b $ty, $*"
    SECONDS=0
    env "$@" timeout 90 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "written|pp512|tg128|floor" || st=1
    echo "   ($SECONDS s)"
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
