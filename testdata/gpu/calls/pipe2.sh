#!/usr/bin/env bash
# pipe1.sh again after the shared-memory attribute fix, shortened: kernel tests
# with the block default and the pipe settings, decode tests on pipe, the 8B
# stack and GEMV times pipe vs block. About 2 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qp
tar xzf "$D/bin.tgz" -C /dev/shm/qp
B=/dev/shm/qp/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache QUERN_REQUIRE_CUDA=1
st=0
timeout 150 "$B/cuda_kernels" --test-threads=1 >"$OUT/kernels.log" 2>&1 || st=1
echo "cuda_kernels: $(grep -h "test result\|panicked" "$OUT/kernels.log" | tr '\n' ' ')"
QUERN_CUDA_MMV_KERNEL=pipe timeout 80 "$B/cuda_decode" --test-threads=1 >"$OUT/decode-pipe.log" 2>&1 || st=1
echo "cuda_decode, pipe: $(grep -h "test result\|panicked" "$OUT/decode-pipe.log" | tr '\n' ' ')"
{
  for k in pipe block; do
    echo "-- stack llama-8b Q4_K_M, $k"
    QUERN_CUDA_MMV_KERNEL=$k timeout 40 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M 2>&1 | tail -1 || st=1
    QUERN_CUDA_MMV_KERNEL=$k timeout 60 "$B/quern" bench --device cuda --kernels --types Q4_0,Q4_K --batches 1 2>&1 | tail -7 || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
echo "final status $st"
exit $st
