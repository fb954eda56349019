#!/usr/bin/env bash
# End of the 16-bit-activation session (call 11): the combine kernels with their first 16
# chunks' values loaded before the chunk weights (decode.cu: combine_preload),
# and the whole committed binary: cuda_model and cuda_decode (8 and 16 bits),
# memcheck over three decode tests, synthetic 8B Q4_K_M and Q4_0 pp512 + tg128.
# About 3 minutes. (That combine change was not kept: no gain beyond noise;
# see BENCHMARKS.md.)
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qz
tar xzf "$D/bin.tgz" -C /dev/shm/qz
B=/dev/shm/qz/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache QUERN_REQUIRE_CUDA=1
st=0
timeout 60 "$B/cuda_model" --test-threads=1 >"$OUT/model.log" 2>&1 || st=1
echo "cuda_model: $(grep -h "test result\|panicked" "$OUT/model.log" | tr '\n' ' ')"
for bits in 8 16; do
  QUERN_ACT_BITS=$bits timeout 80 "$B/cuda_decode" --test-threads=1 >"$OUT/decode$bits.log" 2>&1 || st=1
  echo "cuda_decode, act bits $bits: $(grep -h "test result\|panicked" "$OUT/decode$bits.log" | tr '\n' ' ')"
done
timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_decode" \
  --test-threads=1 three_heads q4_k awq >"$OUT/memcheck.log" 2>&1 || st=1
grep -h "test result\|ERROR SUMMARY" "$OUT/memcheck.log"
{
  for ty in Q4_K_M Q4_0 Q4_K_M; do
    echo "-- synthetic llama-8b $ty"
    timeout 50 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
