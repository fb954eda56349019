#!/usr/bin/env bash
# Device call 2, on the machine call 1 left warm: the reference model (parts
# carried over both calls) on the GPU against the CPU, the model and decode
# tests and memcheck with the geometry call 1 chose, then the 8B weight-product
# stack and the synthetic 8B decode, second-slice kernels against the warp
# kernels, in the same call.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
best=$(cat /tmp/quern-best.env 2>/dev/null)
echo "chosen geometry: ${best:-none (defaults)}"
cp /dev/null "$OUT/stack.txt" 2>/dev/null
STEPS="realmodel tests memcheck" USE_BEST=1 MODEL_PARTS="$(for i in 0 1 2 3; do ls "$D"/../m*/part-$i 2>/dev/null; done | tr '\n' ' ')" \
  REAL_TEXT="$D/wiki.test.raw" REAL_CHUNKS=${REAL_CHUNKS:-4} T_KERNELS_TEST=0 T_LIB_TEST=0 T_MODEL_TEST=60 \
  T_DECODE_TEST=90 MEMCHECK_BIN=cuda_kernels MEMCHECK_FILTER=repacked MEMCHECK_TIMEOUT=${MEMCHECK_TIMEOUT:-150} \
  bash "$D/run.sh"
st=$?
old="QUERN_CUDA_MMV_KERNEL=block QUERN_CUDA_SLAB=0"
for mix in Q4_K_M Q4_0 Q8_0; do
  for e in "$old" "$best"; do
    echo "-- stack llama-8b $mix ${e:-defaults}"
    env $e timeout 60 "$D/quern" bench --device cuda --kernels --stack llama-8b --types "$mix" || st=1
  done
done 2>&1 | tee "$OUT/stack.txt"
for e in "$old" "$best"; do
  echo "-- synthetic llama-8b Q4_K_M ${e:-defaults}"
  env $e timeout 150 "$D/quern" bench --synthetic llama-8b --type Q4_K_M --device cuda --synthetic-dir /dev/shm \
    -p 512 -n 128 -r ${DECODE_REPS:-2} || st=1
done 2>&1 | tee "$OUT/decode.txt"
echo "call2 status $st"
exit $st
