#!/usr/bin/env bash
# Launch-fusion slice, call 3 (prepared, not run in this slice): the committed
# default (Fuse::Default: no per-256 quantiser fused in single-token steps)
# against every quantiser separate (QUERN_CUDA_FUSE=0) and every one fused
# (=1): the decode tests (fused and default against separate, bit for bit),
# cuda_model, synthetic 8B Q4_K_M and Q4_0 pp512 + tg128 for the three, then
# memcheck over the Q4_K_S, AWQ and Q8_0 decode tests. About 2 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
STEPS="tests" T_KERNELS_TEST=0 T_MODEL_TEST=30 T_LIB_TEST=0 T_DECODE_TEST=60 bash "$D/run.sh" >"$OUT/run.log" 2>&1
st=$?
grep -E "^test |test result|panicked|status" "$OUT/run.log"
{
  for t in Q4_K_M Q4_0; do
    for e in "QUERN_CUDA_FUSE=default" "QUERN_CUDA_FUSE=0" "QUERN_CUDA_FUSE=1"; do
      echo "-- synthetic llama-8b $t $e"
      env $e timeout 40 "$D/quern" bench --synthetic llama-8b --type $t --device cuda --synthetic-dir /dev/shm \
        -p 512 -n 128 -r 2 || st=1
      rm -f /dev/shm/quern-synthetic-*
    done
  done
} 2>&1 | tee "$OUT/decode.txt"
{
  echo "-- memcheck (cuda_decode: q4_k, awq, q8_0)"
  QUERN_REQUIRE_CUDA=1 timeout 45 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$D/cuda_decode" --test-threads=1 q4_k awq q8_0 2>&1 | tail -14
  echo "memcheck exit status ${PIPESTATUS[0]}"
} 2>&1 | tee "$OUT/memcheck.log"
echo "fuse3 status $st"
exit $st
