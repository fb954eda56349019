#!/usr/bin/env bash
# attn_partial with every global load of a block issued first (keys and values
# in registers, a warp per position, warp-wide dot products; decode.cu): the
# decode tests at 8 and 16 bits and with 16- and 32-position chunks
# (QUERN_CUDA_ATTN_CHUNK), memcheck over two decode tests, then synthetic 8B
# Q4_K_M and Q4_0 tg128 (and Q4_K_M without attention, its cost, as in
# skip1.sh). About 3 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qt
tar xzf "$D/bin.tgz" -C /dev/shm/qt
B=/dev/shm/qt/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
st=0
for set in "QUERN_ACT_BITS=8" "QUERN_ACT_BITS=16" "QUERN_CUDA_ATTN_CHUNK=16" "QUERN_CUDA_ATTN_CHUNK=32"; do
  name=$(echo "${set#QUERN_}" | tr "=" "-")
  env QUERN_REQUIRE_CUDA=1 $set timeout 80 "$B/cuda_decode" --test-threads=1 >"$OUT/decode-$name.log" 2>&1 || st=1
  echo "$set: $(grep -h "test result\|panicked" "$OUT/decode-$name.log" | tr '\n' ' ')"
done
QUERN_REQUIRE_CUDA=1 timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_decode" \
  --test-threads=1 llama3 awq >"$OUT/memcheck.log" 2>&1 || st=1
grep -h "test result\|ERROR SUMMARY" "$OUT/memcheck.log"
{
  for run in "Q4_K_M:" "Q4_K_M:attn" "Q4_0:" "Q4_K_M:"; do
    ty=${run%%:*}; skip=${run#*:}
    echo "-- synthetic llama-8b $ty skip=${skip:-none}"
    QUERN_CUDA_DECODE_SKIP=$skip timeout 50 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128" || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
