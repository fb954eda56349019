#!/usr/bin/env bash
# results/act16 call 5 (rerun of call 1's failed decode test after the fix): binary to /dev/shm/qa,
# Q4_K_M part a stashed, cuda_decode at 16 bits, memcheck over the 16-bit decode tests.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qa
tar xzf "$D/bin.tgz" -C /dev/shm/qa
B=/dev/shm/qa/bin
chmod +x "$B"/*
cp "$D"/q4km.part-a /dev/shm/
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache QUERN_REQUIRE_CUDA=1
st=0
QUERN_ACT_BITS=16 timeout 80 "$B/cuda_decode" --test-threads=1 --nocapture >"$OUT/decode16.log" 2>&1 || st=1
QUERN_ACT_BITS=8 timeout 80 "$B/cuda_decode" --test-threads=1 --nocapture q4_k >"$OUT/decode8-q4k.log" 2>&1 || st=1
QUERN_ACT_BITS=16 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_decode" \
  --test-threads=1 q4_k awq >"$OUT/memcheck16.log" 2>&1 || st=1
grep -h "test result\|ERROR SUMMARY" "$OUT"/*.log
echo "final status $st"
exit $st
