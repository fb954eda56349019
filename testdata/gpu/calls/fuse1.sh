#!/usr/bin/env bash
# Launch-fusion slice, device call 1: validation of the merged tensor-core
# binary (main at 6e3476b, staged unchanged): the GPU tests, memcheck over the
# whole cuda_kernels suite (tensor-core test on settings 0 and 6 only, for
# time), the kernel benchmark of the repacked formats at batches 1 and 16, and
# synthetic 8B Q4_K_M / Q4_0 / Q8_0 pp512 + tg128.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
STEPS="tests" T_KERNELS_TEST=150 T_MODEL_TEST=30 T_LIB_TEST=20 T_DECODE_TEST=40 bash "$D/run.sh" >"$OUT/run.log" 2>&1
st=$?
tail -4 "$OUT/run.log"
{
  echo "-- memcheck (cuda_kernels, tensor-core test settings 0 and 6)"
  QUERN_REQUIRE_CUDA=1 QUERN_TEST_MMA_SETTINGS=0,6 timeout 80 compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$D/cuda_kernels" --test-threads=1 2>&1 | tail -16
  echo "memcheck exit status ${PIPESTATUS[0]}"
} 2>&1 | tee "$OUT/memcheck.log"
{
  echo "-- kernels default, batches 1,16"
  timeout 50 "$D/quern" bench --device cuda --kernels --types "Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K,Q6_K" --batches 1,16 || st=1
} 2>&1 | tee "$OUT/kernels.txt"
{
  for t in Q4_K_M Q4_0 Q8_0; do
    echo "-- synthetic llama-8b $t default"
    timeout 45 "$D/quern" bench --synthetic llama-8b --type $t --device cuda --synthetic-dir /dev/shm -p 512 -n 128 -r 2 || st=1
    rm -f /dev/shm/quern-synthetic-*
  done
} 2>&1 | tee "$OUT/decode.txt"
echo "fuse1 status $st"
exit $st
