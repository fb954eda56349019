#!/usr/bin/env bash
# Not yet run (written 2026-12-03 for the next session). Q5_0's compact 4-bit
# layout for AWQ folders (QUERN_CUDA_Q5C=1, packed.rs's compact_q5_0) and the
# block kernels' register cap (QUERN_CUDA_DEFINES="MMV_MINB=n"): decode tests
# (the compact AWQ test included) at 8 and 16 bits, memcheck over it, then
# synthetic 8B AWQ decode with and without the compact layout, and Q4_K_M
# decode and the 8B weight-product stack at MMV_MINB 3 and 4; the batch-1
# GEMVs of five formats at both register settings beside PyTorch's int4 and
# bf16 products; the repacked kernel tests as time allows. About 7 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qp
tar xzf "$D/bin.tgz" -C /dev/shm/qp
B=/dev/shm/qp/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache QUERN_REQUIRE_CUDA=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
st=0
timeout 150 "$B/cuda_decode" --test-threads=1 --nocapture >"$OUT/decode.log" 2>&1 || st=1
echo "cuda_decode: $(grep -h "test result\|panicked" "$OUT/decode.log" | tr '\n' ' ')"
QUERN_ACT_BITS=16 timeout 120 "$B/cuda_decode" --test-threads=1 awq >"$OUT/decode16.log" 2>&1 || st=1
echo "cuda_decode awq, 16-bit: $(grep -h "test result\|panicked" "$OUT/decode16.log" | tr '\n' ' ')"
timeout 120 compute-sanitizer --tool memcheck "$B/cuda_decode" --test-threads=1 compact >"$OUT/memcheck.log" 2>&1 || st=1
echo "memcheck: $(grep -h "ERROR SUMMARY\|test result" "$OUT/memcheck.log" | tr '\n' ' ')"
{
  for run in "AWQ QUERN_CUDA_Q5C=0" "AWQ QUERN_CUDA_Q5C=1" "Q4_K_M QUERN_CUDA_FOLD=1" \
    "Q4_K_M QUERN_CUDA_DEFINES=MMV_MINB=3" "Q4_K_M QUERN_CUDA_DEFINES=MMV_MINB=4"; do
    set -- $run
    ty=$1; shift
    echo "-- synthetic llama-8b $ty $*"
    env "$@" timeout 90 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
  done
  for m in 0 3 4; do
    echo "-- stack llama-8b Q4_K_M, MMV_MINB=$m"
    if [ "$m" = 0 ]; then env=(); else env=(QUERN_CUDA_DEFINES=MMV_MINB=$m); fi
    env "${env[@]}" timeout 40 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M 2>&1 | tail -1 || st=1
  done
  for m in 0 3; do
    echo "-- kernels batch 1, MMV_MINB=$m"
    if [ "$m" = 0 ]; then env=(); else env=(QUERN_CUDA_DEFINES=MMV_MINB=$m); fi
    env "${env[@]}" timeout 60 "$B/quern" bench --device cuda --kernels --types Q4_K,Q4_0,Q5_0,Q6_K,Q8_0 \
      --batches 1 2>&1 | grep -v "^\s*$" | tail -16 || st=1
  done
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
TORCH_BATCHES=1 timeout 90 python3 "$B/torch_gemv.py" "$OUT/torch_gemv.json" >"$OUT/torch.txt" 2>&1 || st=1
tail -8 "$OUT/torch.txt"
timeout 100 "$B/cuda_kernels" --test-threads=1 repacked >"$OUT/kernels.log" 2>&1 || st=1
echo "cuda_kernels repacked: $(grep -h "test result\|panicked" "$OUT/kernels.log" | tr '\n' ' ')"
echo "final status $st"
exit $st
