#!/usr/bin/env bash
# Where a decode step's time goes besides the weight products: synthetic 8B
# Q4_K_M tg128 (and pp512) with kernel groups left out (QUERN_CUDA_DECODE_SKIP:
# wrong logits, for timing only), each a fresh process; then the stack of the
# weight products alone. About 3 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qp
tar xzf "$D/bin.tgz" -C /dev/shm/qp
B=/dev/shm/qp/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
st=0
{
  for skip in "" attn post norm silu "attn,post,norm,silu" ""; do
    echo "-- synthetic llama-8b Q4_K_M skip=${skip:-none}"
    QUERN_CUDA_DECODE_SKIP=$skip timeout 50 "$B/quern" bench --synthetic llama-8b --type Q4_K_M --device cuda \
      --synthetic-dir /dev/shm -p 0 -n 128 -r 2 2>&1 | grep -E "tg128" || st=1
  done
  echo "-- same, ctx after a 512-token prompt is not measured by bench; stack:"
  timeout 60 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M 2>&1 | tail -1 || st=1
} 2>&1 | tee "$OUT/skip.txt"
rm -f /dev/shm/quern-synthetic-*
echo "final status $st"
exit $st
