#!/usr/bin/env bash
# Q4_K's batch >= 2 block kernels back on 2 units per step (MUN), its batch-1
# kernel on 1 (MUN1): the repacked kernel tests (batches 1-40), the Q4_K_M
# decode test, and Q4_K at batches 1 and 2. About 2.5 minutes.
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
timeout 110 "$B/cuda_kernels" --test-threads=1 repacked >"$OUT/kernels.log" 2>&1 || st=1
echo "cuda_kernels repacked: $(grep -h "test result\|panicked" "$OUT/kernels.log" | tr '\n' ' ')"
timeout 60 "$B/cuda_decode" --test-threads=1 q4_k >"$OUT/decode.log" 2>&1 || st=1
echo "cuda_decode q4_k: $(grep -h "test result\|panicked" "$OUT/decode.log" | tr '\n' ' ')"
timeout 40 "$B/quern" bench --device cuda --kernels --types Q4_K --batches 1,2 2>&1 | grep -v "^\s*$" |
  tail -7 | tee "$OUT/bench.txt" || st=1
echo "final status $st"
exit $st
