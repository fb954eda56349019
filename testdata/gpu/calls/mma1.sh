#!/usr/bin/env bash
# Tensor-core slice, device call 1: the GPU tests (the new tensor-core kernel
# test included; cuda_model and cuda_decode, whose prefill now runs on them),
# compute-sanitizer memcheck over two settings of the tensor-core test, then the
# kernel benchmark at batches 1-64 with the tensor-core kernels (default: from 8
# rows) and without them (QUERN_CUDA_MMA=0), and with them from batch 1.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
STEPS="tests" T_KERNELS_TEST=200 T_MODEL_TEST=40 T_LIB_TEST=0 T_DECODE_TEST=60 bash "$D/run.sh"
st=$?
echo "-- memcheck (tensor-core test, settings 0 and 4)"
QUERN_REQUIRE_CUDA=1 QUERN_TEST_MMA_SETTINGS=0,4 timeout 100 compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$D/cuda_kernels" --test-threads=1 tensor_core 2>&1 | tail -30 | tee "$OUT/memcheck.log"
echo "memcheck exit status ${PIPESTATUS[0]}" | tee -a "$OUT/memcheck.log"
T="Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K,Q6_K"
{
  echo "-- kernels default (tensor cores from 8 rows)"
  timeout 120 "$D/quern" bench --device cuda --kernels --types "$T" --batches 1,4,8,16,64 || st=1
  echo "-- kernels QUERN_CUDA_MMA=0 (GEMV kernels only)"
  QUERN_CUDA_MMA=0 timeout 60 "$D/quern" bench --device cuda --kernels --types "Q4_0,Q8_0,Q4_K,Q6_K" --batches 8,16,64 || st=1
  echo "-- kernels QUERN_CUDA_MMA_MIN=1 (tensor cores at batch 1-4)"
  QUERN_CUDA_MMA_MIN=1 timeout 60 "$D/quern" bench --device cuda --kernels --types "Q4_0,Q8_0,Q4_K,Q6_K" --batches 1,2,4 || st=1
  echo "-- kernels QUERN_CUDA_Q8_ACT=8 (Q8_0 on 8-bit codes)"
  QUERN_CUDA_Q8_ACT=8 timeout 40 "$D/quern" bench --device cuda --kernels --types "Q8_0" --batches 16,64 || st=1
} 2>&1 | tee "$OUT/kernels.txt"
echo "mma1 status $st"
exit $st
