#!/usr/bin/env bash
# Device call 3 (fresh machine): every GPU test, the kernel benchmark of every
# format beside the PyTorch peers, and the repacked formats with the earlier
# layout (units back to back) and with the warp kernels, in the same call.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
ls -la "$D"/../m*/ 2>&1 | head
STEPS="tests kernels torch variants summary" T_KERNELS_TEST=200 T_MODEL_TEST=60 T_LIB_TEST=120 T_DECODE_TEST=90 \
  T_BENCH=150 T_TORCH=90 T_VARIANT=60 VARIANTS="QUERN_CUDA_SLAB=0 QUERN_CUDA_MMV_KERNEL=warp" \
  VARIANT_TYPES=Q4_0,Q4_K,Q6_K,Q8_0,Q5_0 STACK_MIXES=none bash "$D/run.sh"
