#!/usr/bin/env bash
# Twelfth slice, for the next session lent a GPU (none was lent when it was
# written): L2 hints in the kernels between single-token products
# (cuda/l2hint.rs; off by default, QUERN_CUDA_L2PF=1 turns them on), and the
# eleventh slice's batch-1 leads under the kernel tests before they become
# defaults (Q8_0 one unit per step under bound 3, Q4_K one warp per block).
# Tests: cuda_decode (hints on against off, bit for bit, is one of its checks),
# cuda_kernels repacked with each lead's settings, memcheck over the Q4_K_M
# decode test with the hints on. Then synthetic 8B decode with the hints off /
# on / after the wait / larger / smaller budgets, and the leads' GEMVs.
# About 9 minutes.
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
dec() {
  local ty=$1
  shift
  echo "-- synthetic llama-8b $ty $*"
  env "$@" timeout 60 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
    --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor|L2 hints" || st=1
}
{
  dec Q4_K_M
  dec Q4_K_M QUERN_CUDA_L2PF=1
  dec Q4_K_M QUERN_CUDA_L2PF=1 QUERN_CUDA_DEFINES=L2PF_LATE=1
  dec Q4_K_M QUERN_CUDA_L2PF=24,16,32,8,12,8
  dec Q4_K_M QUERN_CUDA_L2PF=4,4,8,2,2,2
  dec Q4_0
  dec Q4_0 QUERN_CUDA_L2PF=1
  dec AWQ
  dec AWQ QUERN_CUDA_L2PF=1
  dec Q8_0
  dec Q8_0 QUERN_CUDA_L2PF=1
  echo "-- kernels Q8_0 batch 1, default then one unit under bound 3"
  timeout 30 "$B/quern" bench --device cuda --kernels --types Q8_0 --batches 1 2>&1 | grep -v "^\s*$" | tail -4
  QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_MINB=3 timeout 30 "$B/quern" bench --device cuda --kernels \
    --types Q8_0 --batches 1 2>&1 | grep -v "^\s*$" | tail -4
  echo "-- kernels Q4_K batch 1, default then one warp per block"
  timeout 30 "$B/quern" bench --device cuda --kernels --types Q4_K --batches 1 2>&1 | grep -v "^\s*$" | tail -4
  QUERN_CUDA_MMV_WARPS=1 timeout 30 "$B/quern" bench --device cuda --kernels --types Q4_K \
    --batches 1 2>&1 | grep -v "^\s*$" | tail -4
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
QUERN_CUDA_MMV_UNROLL=1 QUERN_CUDA_MMV_MINB=3 timeout 110 "$B/cuda_kernels" --test-threads=1 repacked \
  >"$OUT/kernels-q8lead.log" 2>&1 || st=1
echo "cuda_kernels repacked, unroll 1 bound 3: $(grep -h "test result\|panicked" "$OUT/kernels-q8lead.log" | tr '\n' ' ')"
QUERN_CUDA_MMV_WARPS=1 timeout 110 "$B/cuda_kernels" --test-threads=1 repacked \
  >"$OUT/kernels-warp1.log" 2>&1 || st=1
echo "cuda_kernels repacked, one warp: $(grep -h "test result\|panicked" "$OUT/kernels-warp1.log" | tr '\n' ' ')"
QUERN_CUDA_L2PF=1 timeout 100 compute-sanitizer --tool memcheck "$B/cuda_decode" --test-threads=1 q4_k \
  >"$OUT/memcheck.log" 2>&1 || st=1
echo "memcheck q4_k, hints on: $(grep -h "ERROR SUMMARY\|test result" "$OUT/memcheck.log" | tr '\n' ' ')"
echo "final status $st"
exit $st
