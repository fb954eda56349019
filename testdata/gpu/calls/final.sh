#!/usr/bin/env bash
# End-of-session check of merged main (the tensor-core products, the fused
# quantisers' default and this session's CPU kernel changes, which the GPU
# tests compare against): cuda_kernels, cuda_model and cuda_decode with
# QUERN_REQUIRE_CUDA=1, then synthetic 8B Q4_K_M pp512 + tg128 with the default
# fusion and with every quantiser separate. About 4 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
STEPS="tests" T_KERNELS_TEST=170 T_MODEL_TEST=40 T_LIB_TEST=0 T_DECODE_TEST=70 bash "$D/run.sh" >"$OUT/run.log" 2>&1
st=$?
grep -E "^test |test result|panicked|status" "$OUT/run.log"
{
  for e in "QUERN_CUDA_FUSE=default" "QUERN_CUDA_FUSE=0"; do
    echo "-- synthetic llama-8b Q4_K_M $e"
    env $e timeout 45 "$D/quern" bench --synthetic llama-8b --type Q4_K_M --device cuda --synthetic-dir /dev/shm \
      -p 512 -n 128 -r 2 || st=1
    rm -f /dev/shm/quern-synthetic-*
  done
} 2>&1 | tee "$OUT/decode.txt"
echo "final status $st"
exit $st
