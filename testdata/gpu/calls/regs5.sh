#!/usr/bin/env bash
# Leads for the next session, on the committed binary: batch-1 geometry
# variants of Q4_K, Q6_K and Q8_0 beyond what regs1.sh swept (units per step,
# rows per block, warps per block under a bound). About 1.5 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qp
tar xzf "$D/bin.tgz" -C /dev/shm/qp
B=/dev/shm/qp/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
st=0
{
  for v in "Q4_K" "Q4_K QUERN_CUDA_MMV_MINB=2" "Q4_K QUERN_CUDA_MMV_MINB=3 QUERN_CUDA_MMV_ROWS=4" \
    "Q4_K QUERN_CUDA_MMV_MINB=3 QUERN_CUDA_MMV_WARPS=1" "Q4_K QUERN_CUDA_MMV_MINB=2 QUERN_CUDA_MMV_ROWS=4" \
    "Q6_K" "Q6_K QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_MINB=3" "Q6_K QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_MINB=2" \
    "Q8_0" "Q8_0 QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_MINB=3" "Q8_0 QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_MINB=2"; do
    set -- $v
    ty=$1; shift
    echo "-- $ty batch 1 $*"
    env "$@" timeout 30 "$B/quern" bench --device cuda --kernels --types $ty --batches 1 2>&1 |
      grep -v "^\s*$" | tail -4 | head -3 || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
echo "final status $st"
exit $st
