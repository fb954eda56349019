#!/usr/bin/env bash
# RMSNorms folded into the single-token products around them (cuda/fold.rs):
# decode tests at 8 and 16 bits (the fold against the norms' own kernels, its
# determinism, GPU against CPU), the repacked kernel tests (the block kernels'
# new arguments), memcheck over the folded decode tests, then synthetic 8B
# decode with the fold on and off (Q4_K_M, Q4_0, AWQ, Q8_0) and with every
# quantiser fused. About 7 minutes.
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
grep -h "norms folded\|norms folded against" "$OUT/decode.log" | head -30
QUERN_ACT_BITS=16 timeout 120 "$B/cuda_decode" --test-threads=1 --nocapture >"$OUT/decode16.log" 2>&1 || st=1
echo "cuda_decode, 16-bit: $(grep -h "test result\|panicked" "$OUT/decode16.log" | tr '\n' ' ')"
grep -h "norms folded against" "$OUT/decode16.log" | head -20
timeout 200 "$B/cuda_kernels" --test-threads=1 every_format repacked >"$OUT/kernels.log" 2>&1 || st=1
echo "cuda_kernels: $(grep -h "test result\|panicked" "$OUT/kernels.log" | tr '\n' ' ')"
timeout 150 compute-sanitizer --tool memcheck "$B/cuda_decode" --test-threads=1 q4_k llama_q8_0 >"$OUT/memcheck.log" 2>&1 || st=1
echo "memcheck: $(grep -h "ERROR SUMMARY\|test result" "$OUT/memcheck.log" | tr '\n' ' ')"
{
  for run in "Q4_K_M QUERN_CUDA_FOLD=1" "Q4_K_M QUERN_CUDA_FOLD=0" "Q4_K_M QUERN_CUDA_FUSE=1" \
    "Q4_0 QUERN_CUDA_FOLD=1" "Q4_0 QUERN_CUDA_FOLD=0" "AWQ QUERN_CUDA_FOLD=1" "AWQ QUERN_CUDA_FOLD=0" \
    "Q8_0 QUERN_CUDA_FOLD=1"; do
    set -- $run
    ty=$1; shift
    echo "-- synthetic llama-8b $ty, $*"
    SECONDS=0
    env "$@" timeout 90 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
    echo "   ($SECONDS s)"
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
