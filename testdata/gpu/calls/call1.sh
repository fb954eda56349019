#!/usr/bin/env bash
# Device call 1 of the warp-kernel slice (issue 8): the kernel tests, the
# batch-1 geometry sweep (the best geometry per format is left in
# /tmp/quern-best.env for the next call of the same warm machine) and two
# Nsight Compute profiles. Run as `bash DIR/call1.sh` where DIR is what
# stage.sh made (binaries may be gzipped to fit the carry limit).
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
ls -la "$D" "$D"/../m*/ 2>&1 | head -30
# Warp kernels (default: fused, slabs, per-format rows x units) against the
# second slice's kernels (block kernels over units back to back) and the older
# kernels over the file layout; then rows x units, warps per block, staging depth.
SW="QUERN_CUDA_MMV_KERNEL=block:QUERN_CUDA_SLAB=0 QUERN_CUDA_PACKED=0 QUERN_CUDA_MMV_KERNEL=block"
SW="$SW QUERN_CUDA_MMW_FUSE=0 QUERN_CUDA_SLAB=0"
for r in 1 2 4; do for u in 1 2 4; do SW="$SW QUERN_CUDA_MMW_ROWS=$r:QUERN_CUDA_MMW_UNITS=$u"; done; done
SW="$SW QUERN_CUDA_MMW_WARPS=4 QUERN_CUDA_MMW_STAGE=4 QUERN_CUDA_MMW_WARPS=4:QUERN_CUDA_MMW_STAGE=4"
STEPS="tests sweep ncu" T_KERNELS_TEST=${T_KERNELS_TEST:-200} T_MODEL_TEST=0 T_LIB_TEST=40 T_DECODE_TEST=0 \
  T_SWEEP=40 SWEEP="$SW" bash "$D/run.sh"
