#!/usr/bin/env bash
# Device call 5 (fresh machine; carries the first part of the model for call
# 6): Nsight Compute on the default (block) kernels at batch 1.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
ls -la "$D"/../m*/
STEPS="ncu" NCU_FILE=ncu.txt NCU_CASES="Q4_K:4096x14336:mmv_b1 Q4_0:4096x14336:mmv_b1 Q8_0:4096x14336:mmv_b1" \
  bash "$D/run.sh"
