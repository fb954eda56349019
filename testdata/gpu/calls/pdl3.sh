#!/usr/bin/env bash
# Which part of programmatic dependent launch breaks the per-32 / 16-bit
# single-token decode tests (Q8_0, AWQ) in pdl1/pdl2: the two tests under
# variants (PDL off, fusion off, no graph, products waiting at their start
# instead of after their first weight loads, activations read through L2
# instead of the read-only path); every variant that passes runs the whole
# cuda_decode and a short synthetic 8B Q4_K_M decode.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qs3
tar xzf "$D/bin.tgz" -C /dev/shm/qs3
B=/dev/shm/qs3/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache QUERN_REQUIRE_CUDA=1
for v in "X=1" "QUERN_CUDA_PDL=0" "QUERN_CUDA_FUSE=0" "QUERN_CUDA_GRAPH=0" "QUERN_CUDA_DEFINES=PDL_EARLY=0" \
         "QUERN_CUDA_DEFINES=ACT_LDG=0" "QUERN_CUDA_DEFINES=PDL_EARLY=0:ACT_LDG=0"; do
  e=${v//:/ }
  r=$(env "$e" timeout 60 "$B/cuda_decode" --test-threads=1 q8_0 awq 2>&1 | grep -E "test result|panicked at|relative error|non-finite" | tr '\n' ' ')
  echo "[$v] $r"
  case "$r" in
    *"2 passed"*)
      env "$e" timeout 60 "$B/cuda_decode" --test-threads=1 2>&1 | grep -E "test result|FAILED" | tr '\n' ' '; echo
      env "$e" timeout 40 "$B/quern" bench --synthetic llama-8b --type Q4_K_M --device cuda --synthetic-dir /dev/shm \
        -p 512 -n 128 -r 1 2>&1 | grep -E "pp512|tg128"
      rm -f /dev/shm/quern-synthetic-* ;;
  esac
done 2>&1 | tee "$OUT/variants.txt"
