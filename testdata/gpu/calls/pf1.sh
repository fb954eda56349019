#!/usr/bin/env bash
# Block GEMV kernels prefetching their rows' weights into L2 before the wait for
# the previous kernel (QUERN_CUDA_PREFETCH=1): kernel and decode tests with it
# (outputs poisoned), then the 8B weight-product stack, single GEMVs and
# synthetic 8B decode (Q4_K_M, Q4_0, AWQ) with and without; and the RMSNorm
# with the per-256 quantiser fused (QUERN_CUDA_FUSE=1) now that it keeps every
# warp busy. About 6 minutes.
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
QUERN_CUDA_PREFETCH=1 timeout 300 "$B/cuda_kernels" --test-threads=1 every_format repacked large_shape >"$OUT/kernels.log" 2>&1 || st=1
echo "cuda_kernels, prefetch: $(grep -h "test result\|panicked" "$OUT/kernels.log" | tr '\n' ' ')"
timeout 120 "$B/cuda_decode" --test-threads=1 >"$OUT/decode.log" 2>&1 || st=1
echo "cuda_decode: $(grep -h "test result\|panicked" "$OUT/decode.log" | tr '\n' ' ')"
QUERN_CUDA_PREFETCH=1 timeout 120 "$B/cuda_decode" --test-threads=1 >"$OUT/decode-prefetch.log" 2>&1 || st=1
echo "cuda_decode, prefetch: $(grep -h "test result\|panicked" "$OUT/decode-prefetch.log" | tr '\n' ' ')"
{
  for p in 0 1; do
    echo "-- QUERN_CUDA_PREFETCH=$p"
    QUERN_CUDA_PREFETCH=$p timeout 40 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M 2>&1 | tail -1 || st=1
    QUERN_CUDA_PREFETCH=$p timeout 60 "$B/quern" bench --device cuda --kernels --types Q4_0,Q4_K,Q5_0 --batches 1 2>&1 | tail -10 || st=1
  done
  for run in "Q4_K_M QUERN_CUDA_PREFETCH=0" "Q4_K_M QUERN_CUDA_PREFETCH=1" "Q4_K_M QUERN_CUDA_FUSE=1" \
    "Q4_K_M QUERN_CUDA_FUSE=1 QUERN_CUDA_PREFETCH=1" "Q4_0 QUERN_CUDA_PREFETCH=0" "Q4_0 QUERN_CUDA_PREFETCH=1" \
    "AWQ QUERN_CUDA_PREFETCH=1"; do
    set -- $run
    ty=$1; shift
    echo "-- synthetic llama-8b $ty, $*"
    env "$@" timeout 90 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
