#!/usr/bin/env bash
# Device call 7 (fresh machine): the kernel tests with Q8_0 on 8-bit activation
# codes as a fifth setting (QUERN_CUDA_Q8_ACT=8); Q8_0's kernels and synthetic
# 8B prefill/decode on 16-bit (default) and 8-bit codes, and Q4_K_M's decode with
# codes units back to back (QUERN_CUDA_SLAB=0) and in slabs (default), each pair
# in this one call.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
STEPS="tests" T_KERNELS_TEST=200 T_MODEL_TEST=0 T_LIB_TEST=0 T_DECODE_TEST=90 bash "$D/run.sh"
st=$?
for e in "" "QUERN_CUDA_Q8_ACT=8"; do
  echo "-- kernels Q8_0 ${e:-default}"
  env $e timeout 60 "$D/quern" bench --device cuda --kernels --types Q8_0 --batches 1,4,16 || st=1
done 2>&1 | tee "$OUT/kernels.txt"
for e in "" "QUERN_CUDA_Q8_ACT=8"; do
  echo "-- synthetic llama-8b Q8_0 ${e:-default}"
  env $e timeout 120 "$D/quern" bench --synthetic llama-8b --type Q8_0 --device cuda --synthetic-dir /dev/shm \
    -p 512 -n 128 -r 2 || st=1
done 2>&1 | tee "$OUT/decode.txt"
for e in "QUERN_CUDA_SLAB=0" ""; do
  echo "-- synthetic llama-8b Q4_K_M ${e:-default}"
  env $e timeout 120 "$D/quern" bench --synthetic llama-8b --type Q4_K_M --device cuda --synthetic-dir /dev/shm \
    -p 512 -n 128 -r 2 || st=1
done 2>&1 | tee -a "$OUT/decode.txt"
echo "call7 status $st"
exit $st
