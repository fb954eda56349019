#!/usr/bin/env bash
# Device call 4, on the machine call 3 left warm: the reference model (parts
# carried over both calls) on the GPU against the CPU, memcheck over the
# repacked kernels' test, the 8B weight-product stack and the synthetic 8B
# decode.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
STEPS="realmodel memcheck" MODEL_PARTS="$(for i in 0 1 2 3; do ls "$D"/../m*/part-$i 2>/dev/null; done | tr '\n' ' ')" \
  REAL_TEXT="$D/wiki.test.raw" REAL_CHUNKS=${REAL_CHUNKS:-4} MEMCHECK_BIN=cuda_kernels MEMCHECK_FILTER=repacked \
  MEMCHECK_TIMEOUT=${MEMCHECK_TIMEOUT:-150} bash "$D/run.sh"
st=$?
for mix in Q4_K_M Q4_0 Q8_0; do
  echo "-- stack llama-8b $mix"
  timeout 60 "$D/quern" bench --device cuda --kernels --stack llama-8b --types "$mix" || st=1
done 2>&1 | tee "$OUT/stack.txt"
for t in Q4_K_M Q4_0 Q8_0; do
  echo "-- synthetic llama-8b $t"
  timeout 120 "$D/quern" bench --synthetic llama-8b --type "$t" --device cuda --synthetic-dir /dev/shm \
    -p 512 -n 128 -r ${DECODE_REPS:-2} || st=1
done 2>&1 | tee "$OUT/decode.txt"
echo "call4 status $st"
exit $st
