#!/usr/bin/env bash
# Tensor-core slice, device call 2 (K split, integer super-block sums for the K
# formats): the GPU tests and memcheck over the tensor-core test (three
# settings), the kernel benchmark at batches 1-64, PyTorch bf16 at batches 16
# and 64 and a bf16 8B prefill's products, and synthetic 8B prefill/decode with
# the tensor-core kernels in batches of 512 (default) against the GEMV kernels
# in batches of 64 (before: QUERN_CUDA_MMA=0 QUERN_CUDA_PREFILL_BATCH=64).
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
STEPS="tests" T_KERNELS_TEST=150 T_MODEL_TEST=30 T_LIB_TEST=0 T_DECODE_TEST=40 bash "$D/run.sh"
st=$?
echo "-- memcheck (tensor-core test, settings 0, 4, 6)"
QUERN_REQUIRE_CUDA=1 QUERN_TEST_MMA_SETTINGS=0,4,6 timeout 60 compute-sanitizer --tool memcheck --error-exitcode 9 \
  "$D/cuda_kernels" --test-threads=1 tensor_core 2>&1 | tail -30 | tee "$OUT/memcheck.log"
echo "memcheck exit status ${PIPESTATUS[0]}" | tee -a "$OUT/memcheck.log"
{
  echo "-- kernels default (tensor cores from 8 rows)"
  timeout 90 "$D/quern" bench --device cuda --kernels --types "Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K,Q6_K" --batches 1,4,8,16,64 || st=1
  echo "-- kernels QUERN_CUDA_MMA_MIN=1 (tensor cores at batch 2-4)"
  QUERN_CUDA_MMA_MIN=1 timeout 40 "$D/quern" bench --device cuda --kernels --types "Q4_0,Q8_0,Q4_K,Q6_K" --batches 2,4 || st=1
  echo "-- kernels QUERN_CUDA_Q8_ACT=8 (Q8_0 on 8-bit codes)"
  QUERN_CUDA_Q8_ACT=8 timeout 30 "$D/quern" bench --device cuda --kernels --types "Q8_0" --batches 16,64 || st=1
} 2>&1 | tee "$OUT/kernels.txt"
{
  for t in Q4_K_M Q4_0 Q8_0; do
    for e in "" "QUERN_CUDA_MMA=0 QUERN_CUDA_PREFILL_BATCH=64"; do
      echo "-- synthetic llama-8b $t ${e:-default}"
      env $e timeout 60 "$D/quern" bench --synthetic llama-8b --type $t --device cuda --synthetic-dir /dev/shm \
        -p 512 -n 128 -r 2 || st=1
    done
  done
  for e in "QUERN_CUDA_PREFILL_BATCH=64"; do
    echo "-- synthetic llama-8b Q4_K_M $e (prefill only)"
    env $e timeout 40 "$D/quern" bench --synthetic llama-8b --type Q4_K_M --device cuda --synthetic-dir /dev/shm \
      -p 512 -n 0 -r 2 || st=1
  done
  echo "-- synthetic llama-8b Q8_0 QUERN_CUDA_Q8_ACT=8 (prefill only)"
  QUERN_CUDA_Q8_ACT=8 timeout 40 "$D/quern" bench --synthetic llama-8b --type Q8_0 --device cuda --synthetic-dir /dev/shm \
    -p 512 -n 0 -r 2 || st=1
} 2>&1 | tee "$OUT/decode.txt"
{
  TORCH_BATCHES=16,64 timeout 70 python3 "$D/torch_gemv.py" "$OUT/torch_gemv.json" || st=1
  timeout 60 python3 "$D/torch_prefill.py" 512 "$OUT/torch_prefill.json" || st=1
} 2>&1 | tee "$OUT/torch.txt"
echo "mma2 status $st"
exit $st
