#!/usr/bin/env bash
# attn_prefill (decode.cu): a prefill's attention in one flash-style pass per
# KV head and 64 query rows instead of the decode kernels per token. The decode
# tests at 8 and 16 bits (prefills of 5 and 73 tokens, in batches of 73, 16 and
# 4; a model with 3 query heads per KV head), memcheck over three of them, then
# synthetic 8B pp512 + tg128 for Q4_K_M and Q4_0 with the new pass and without
# it (QUERN_CUDA_PREFILL_ATTN=0). About 3 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qf
tar xzf "$D/bin.tgz" -C /dev/shm/qf
B=/dev/shm/qf/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
st=0
for bits in 8 16; do
  QUERN_REQUIRE_CUDA=1 QUERN_ACT_BITS=$bits timeout 80 "$B/cuda_decode" --test-threads=1 >"$OUT/decode$bits.log" 2>&1 || st=1
  echo "act bits $bits: $(grep -h "test result\|panicked" "$OUT/decode$bits.log" | tr '\n' ' ')"
done
QUERN_REQUIRE_CUDA=1 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_decode" \
  --test-threads=1 three_heads llama3 awq >"$OUT/memcheck.log" 2>&1 || st=1
grep -h "test result\|ERROR SUMMARY" "$OUT/memcheck.log"
{
  for run in "Q4_K_M:1" "Q4_K_M:0" "Q4_0:1" "Q4_0:0"; do
    ty=${run%%:*}; on=${run#*:}
    echo "-- synthetic llama-8b $ty QUERN_CUDA_PREFILL_ATTN=$on"
    QUERN_CUDA_PREFILL_ATTN=$on timeout 50 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128" || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
