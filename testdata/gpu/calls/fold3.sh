#!/usr/bin/env bash
# RMSNorms folded, third try (the consumers' sums loaded after the product, not
# before it; the attention's combine and SwiGLU fuse their per-256 quantisers
# by default): decode tests at 8 and 16 bits, memcheck over two folded decode
# tests, then the previous commit's binary (bin/quern-old) against this one on
# the 8B weight-product stack and synthetic 8B decode. About 5 minutes.
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
timeout 120 "$B/cuda_decode" --test-threads=1 --nocapture >"$OUT/decode.log" 2>&1 || st=1
echo "cuda_decode: $(grep -h "test result\|panicked" "$OUT/decode.log" | tr '\n' ' ')"
QUERN_ACT_BITS=16 timeout 120 "$B/cuda_decode" --test-threads=1 --nocapture >"$OUT/decode16.log" 2>&1 || st=1
echo "cuda_decode, 16-bit: $(grep -h "test result\|panicked" "$OUT/decode16.log" | tr '\n' ' ')"
timeout 150 compute-sanitizer --tool memcheck "$B/cuda_decode" --test-threads=1 q4_k llama_q8_0 >"$OUT/memcheck.log" 2>&1 || st=1
echo "memcheck: $(grep -h "ERROR SUMMARY\|test result" "$OUT/memcheck.log" | tr '\n' ' ')"
{
  for q in quern-old quern; do
    echo "-- $q: stack llama-8b Q4_K_M"
    timeout 40 "$B/$q" bench --device cuda --kernels --stack llama-8b --types Q4_K_M 2>&1 | tail -1 || st=1
  done
  for run in "quern-old Q4_K_M" "quern Q4_K_M" "quern Q4_K_M QUERN_CUDA_FOLD=0" "quern-old Q4_0" "quern Q4_0" \
    "quern-old AWQ" "quern AWQ" "quern-old Q8_0" "quern Q8_0"; do
    set -- $run
    q=$1 ty=$2; shift 2
    echo "-- $q synthetic llama-8b $ty $*"
    env "$@" timeout 90 "$B/$q" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
