#!/usr/bin/env bash
# The compact Q5_0 layout on by default and the block kernels' per-format
# minimum-blocks bound (mod.rs mmv_min_blocks: 3 for Q4_0, Q4_1, Q5_0, Q5_1 and
# Q6_K on 8-bit codes): decode tests, memcheck over the compact test, the
# repacked kernel tests; synthetic 8B decode with the bound and without it
# (QUERN_CUDA_MMV_MINB=0); a batch-1 sweep of the bound for seven formats
# and of Q4_K's unroll and rows under it; batches 2 and 4. About 7 minutes.
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
timeout 120 "$B/cuda_decode" --test-threads=1 >"$OUT/decode.log" 2>&1 || st=1
echo "cuda_decode: $(grep -h "test result\|panicked" "$OUT/decode.log" | tr '\n' ' ')"
timeout 60 compute-sanitizer --tool memcheck "$B/cuda_decode" --test-threads=1 compact >"$OUT/memcheck.log" 2>&1 || st=1
echo "memcheck: $(grep -h "ERROR SUMMARY\|test result" "$OUT/memcheck.log" | tr '\n' ' ')"
timeout 100 "$B/cuda_kernels" --test-threads=1 repacked >"$OUT/kernels.log" 2>&1 || st=1
echo "cuda_kernels repacked: $(grep -h "test result\|panicked" "$OUT/kernels.log" | tr '\n' ' ')"
kb() { # env... -- bench args
  timeout 60 env "$@" 2>&1 | grep -v "^\s*$" | grep -v "^model\|^weights" || st=1
}
{
  for run in "AWQ" "AWQ QUERN_CUDA_MMV_MINB=0" "Q4_0" "Q4_0 QUERN_CUDA_MMV_MINB=0" "Q4_K_M" \
    "Q4_K_M QUERN_CUDA_MMV_MINB=0"; do
    set -- $run
    ty=$1; shift
    echo "-- synthetic llama-8b $ty $*"
    env "$@" timeout 90 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
  done
  for m in 0 2 3; do
    echo "-- kernels batch 1, QUERN_CUDA_MMV_MINB=$m"
    kb QUERN_CUDA_MMV_MINB=$m "$B/quern" bench --device cuda --kernels \
      --types Q4_0,Q4_1,Q5_0,Q5_1,Q6_K,Q4_K,Q8_0 --batches 1 | tail -22
  done
  for v in "QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_MINB=0" "QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_MINB=3" \
    "QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_MINB=4" "QUERN_CUDA_MMV_ROWS=1 QUERN_CUDA_MMV_MINB=3" \
    "QUERN_CUDA_MMV_UNROLL=4 QUERN_CUDA_MMV_MINB=2"; do
    echo "-- kernels Q4_K batch 1, $v"
    kb $v "$B/quern" bench --device cuda --kernels --types Q4_K --batches 1 | tail -4
  done
  for m in 0 3; do
    echo "-- kernels batches 2 and 4, QUERN_CUDA_MMV_MINB=$m"
    kb QUERN_CUDA_MMV_MINB=$m "$B/quern" bench --device cuda --kernels --types Q4_0,Q5_0,Q6_K \
      --batches 2,4 | tail -19
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
