#!/usr/bin/env bash
# The eleventh slice's defaults together: the batch-1 block kernel's bound per
# format (2 for Q4_0/Q4_1/Q5_0/Q5_1/Q6_K, 3 for Q4_K at one unit per step),
# the compact Q5_0 layout, and qkv_post's work inside the attention's first
# pass (attn_partial_post). Decode tests, memcheck over the new attention
# path, the repacked kernel tests; synthetic 8B decode per type (Q4_K_M also
# with QUERN_CUDA_ATTN_POST=0); batch-1 and -2 GEMVs beside PyTorch's int4
# and bf16 products; the 8B weight-product stack. About 6.5 minutes.
# attn_partial_post was slower here and was dropped after this call (its
# switch QUERN_CUDA_ATTN_POST no longer exists).
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
timeout 120 "$B/cuda_decode" --test-threads=1 --nocapture >"$OUT/decode.log" 2>&1 || st=1
echo "cuda_decode: $(grep -h "test result\|panicked" "$OUT/decode.log" | tr '\n' ' ')"
grep -h "qkv_post in the attention" "$OUT/decode.log" | head -3
timeout 90 compute-sanitizer --tool memcheck "$B/cuda_decode" --test-threads=1 qwen2 llama_q8_0 >"$OUT/memcheck.log" 2>&1 || st=1
echo "memcheck: $(grep -h "ERROR SUMMARY\|test result" "$OUT/memcheck.log" | tr '\n' ' ')"
timeout 100 "$B/cuda_kernels" --test-threads=1 repacked >"$OUT/kernels.log" 2>&1 || st=1
echo "cuda_kernels repacked: $(grep -h "test result\|panicked" "$OUT/kernels.log" | tr '\n' ' ')"
{
  for run in "Q4_K_M" "Q4_K_M QUERN_CUDA_ATTN_POST=0" "Q4_0" "AWQ" "Q8_0"; do
    set -- $run
    ty=$1; shift
    echo "-- synthetic llama-8b $ty $*"
    env "$@" timeout 90 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda \
      --synthetic-dir /dev/shm -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
  done
  echo "-- stack llama-8b Q4_K_M"
  timeout 40 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M 2>&1 | tail -1 || st=1
  echo "-- kernels batches 1 and 2"
  timeout 90 "$B/quern" bench --device cuda --kernels --types Q4_0,Q4_1,Q5_0,Q5_1,Q6_K,Q4_K,Q8_0 \
    --batches 1,2 2>&1 | grep -v "^\s*$" | tail -43 || st=1
} 2>&1 | tee "$OUT/bench.txt"
rm -f /dev/shm/quern-synthetic-*
TORCH_BATCHES=1,2 timeout 90 python3 "$B/torch_gemv.py" "$OUT/torch_gemv.json" >"$OUT/torch.txt" 2>&1 || st=1
tail -13 "$OUT/torch.txt"
echo "final status $st"
exit $st
