#!/usr/bin/env bash
# The RMSNorm kernels with each thread's values and weights held in registers
# (decode.cu: residual_inv_rms_reg): the decode tests at 8 and 16 bits (the
# fused and unfused paths must stay bit-identical), memcheck over the Q4_K and
# AWQ decode tests, then synthetic 8B decode: Q4_K_M and Q4_0 tg128, and
# Q4_K_M without the norms (their cost) as in skip1.sh. About 3 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qn
tar xzf "$D/bin.tgz" -C /dev/shm/qn
B=/dev/shm/qn/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
st=0
for bits in 8 16; do
  QUERN_REQUIRE_CUDA=1 QUERN_ACT_BITS=$bits timeout 80 "$B/cuda_decode" --test-threads=1 >"$OUT/decode$bits.log" 2>&1 || st=1
  grep -H "test result\|panicked" "$OUT/decode$bits.log"
done
QUERN_REQUIRE_CUDA=1 timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_decode" \
  --test-threads=1 q4_k awq >"$OUT/memcheck.log" 2>&1 || st=1
grep -h "test result\|ERROR SUMMARY" "$OUT/memcheck.log"
{
  for run in "Q4_K_M:" "Q4_K_M:norm" "Q4_0:" "Q4_K_M:"; do
    ty=${run%%:*}; skip=${run#*:}
    echo "-- synthetic llama-8b $ty skip=${skip:-none}"
    QUERN_CUDA_DECODE_SKIP=$skip timeout 50 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128" || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
