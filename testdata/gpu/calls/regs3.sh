#!/usr/bin/env bash
# The eleventh slice as committed (regs2.sh's defaults without
# attn_partial_post, which was slower): decode tests (the compact layout's
# bytes read now checked), synthetic 8B decode per type, and Q4_K at batch 2
# with one unit per step (default) against two. About 3 minutes.
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
{
  for ty in Q4_K_M Q4_0 AWQ Q8_0; do
    echo "-- synthetic llama-8b $ty"
    timeout 90 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
  done
  for u in default 2; do
    echo "-- kernels Q4_K batches 1 and 2, unroll $u"
    if [ $u = default ]; then env=(); else env=(QUERN_CUDA_MMV_UNROLL=$u); fi
    env "${env[@]}" timeout 40 "$B/quern" bench --device cuda --kernels --types Q4_K --batches 1,2 2>&1 |
      grep -v "^\s*$" | tail -7 || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
