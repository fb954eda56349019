#!/usr/bin/env bash
# Call 6 of results/pdl: pdl4's binary minus the prefill's exemption (PDL on
# every launch, prefill included; every kernel waits first thing): the GPU
# tests, then synthetic 8B Q4_K_M and Q4_0 pp512 + tg128 with PDL on and off,
# twice each, alternating (this is what put the exemption back). About 4 minutes.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qs5
tar xzf "$D/bin.tgz" -C /dev/shm/qs5
B=/dev/shm/qs5/bin
chmod +x "$B"/*
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
STEPS="tests" T_KERNELS_TEST=170 T_MODEL_TEST=60 T_LIB_TEST=0 T_DECODE_TEST=70 bash "$B/run.sh" >"$OUT/run.log" 2>&1
st=$?
grep -E "^test |test result|panicked" "$OUT/run.log"
{
  for t in Q4_K_M Q4_0; do
    for e in "QUERN_CUDA_PDL=1" "QUERN_CUDA_PDL=0" "QUERN_CUDA_PDL=1" "QUERN_CUDA_PDL=0"; do
      echo "-- synthetic llama-8b $t $e"
      env $e timeout 45 "$B/quern" bench --synthetic llama-8b --type $t --device cuda --synthetic-dir /dev/shm \
        -p 512 -n 128 -r 2 2>&1 | grep -E "pp512|tg128|floor" || st=1
      rm -f /dev/shm/quern-synthetic-*
    done
  done
} 2>&1 | tee "$OUT/decode.txt"
echo "final status $st"
exit $st
