#!/usr/bin/env bash
# results/act16 call 1: 16-bit activation codes for the 4- and 5-bit formats
# (QUERN_ACT_BITS=16, runtime/src/precision.rs). The GPU tests (cuda_kernels
# with its new 16-bit test; cuda_decode and cuda_model at 8 and at 16 bits,
# the decode test printing its largest GPU-vs-CPU error), memcheck over the
# 16-bit decode tests, then what the setting costs: the 8B weight-product
# stack and the synthetic 8B decode/prefill at 8 and 16 bits. Leaves the
# binary in /dev/shm/qa and the first part of the Q4_K_M reference file in
# /dev/shm for call 2. About 6 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qa
tar xzf "$D/bin.tgz" -C /dev/shm/qa
B=/dev/shm/qa/bin
chmod +x "$B"/*
cp "$D"/q4km.part-a /dev/shm/ 2>/dev/null
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache QUERN_REQUIRE_CUDA=1
st=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv > "$OUT/machine.txt" 2>&1
t() { # NAME LIMIT ENV... -- BIN ARGS...
  local name=$1 limit=$2; shift 2
  local envs=()
  while [ "$1" != "--" ]; do envs+=("$1"); shift; done
  shift
  local s=$(date +%s)
  env "${envs[@]}" timeout "$limit" "$@" --test-threads=1 --nocapture >"$OUT/$name.log" 2>&1 || st=1
  echo "== $name ($(( $(date +%s) - s )) s)"
  grep -E "^test |test result|panicked|largest" "$OUT/$name.log"
}
t kernels 300 QUERN_ACT_BITS=8 -- "$B/cuda_kernels"
t decode8 80 QUERN_ACT_BITS=8 -- "$B/cuda_decode"
t decode16 80 QUERN_ACT_BITS=16 -- "$B/cuda_decode"
t model16 60 QUERN_ACT_BITS=16 -- "$B/cuda_model"
echo "== memcheck, 16-bit decode tests (Q4_K_S, AWQ)"
QUERN_ACT_BITS=16 timeout 150 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/cuda_decode" \
  --test-threads=1 q4_k awq 2>&1 | tail -8 | tee "$OUT/memcheck16.log"
[ "${PIPESTATUS[0]}" = 0 ] || st=1
{
  for bits in 8 16; do
    echo "-- stack llama-8b Q4_K_M act-bits $bits"
    timeout 60 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M --act-bits $bits 2>&1 | tail -4 || st=1
  done
  for ty in Q4_K_M Q4_0; do
    for bits in 8 16; do
      echo "-- synthetic llama-8b $ty act-bits $bits"
      timeout 45 "$B/quern" bench --synthetic llama-8b --type $ty --device cuda --synthetic-dir /dev/shm \
        -p 512 -n 128 -r 2 --act-bits $bits 2>&1 | grep -E "pp512|tg128|floor" || st=1
      rm -f /dev/shm/quern-synthetic-*
    done
  done
} 2>&1 | tee "$OUT/bench.txt"
echo "final status $st"
exit $st
