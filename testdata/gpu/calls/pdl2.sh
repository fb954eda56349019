#!/usr/bin/env bash
# Programmatic dependent launch, second try (pointers laundered after the wait,
# trigger after the wait): the GPU tests with it on (cuda_decode three times and
# once with every quantiser fused, as races show up intermittently), then the 8B
# weight-product stack and synthetic 8B decode/prefill with it on and off
# (QUERN_CUDA_PDL=0). Carried: bin.tgz (what stage.sh made, tarred) and the first
# part of the AWQ reference folder, left in /dev/shm for the next call (awq.sh).
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT" /dev/shm/qs
tar xzf "$D/bin.tgz" -C /dev/shm/qs && cp "$D"/awq.part-* /dev/shm/ 2>/dev/null
B=/dev/shm/qs/bin
cd "$B" || exit 1
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
STEPS="tests" T_KERNELS_TEST=170 T_MODEL_TEST=40 T_LIB_TEST=0 T_DECODE_TEST=70 bash "$B/run.sh" >"$OUT/run.log" 2>&1
st=$?
grep -E "^test |test result|panicked|status" "$OUT/run.log"
for e in "QUERN_CUDA_PDL=1" "QUERN_CUDA_PDL=1" "QUERN_CUDA_FUSE=1"; do
  echo "-- cuda_decode again, $e"
  env $e QUERN_REQUIRE_CUDA=1 timeout 60 "$B/cuda_decode" --test-threads=1 2>&1 | grep -E "FAILED|panicked|test result" || st=1
done | tee "$OUT/decode-tests.txt"
{
  for e in "QUERN_CUDA_PDL=1" "QUERN_CUDA_PDL=0"; do
    echo "-- stack Q4_K_M $e"
    env $e timeout 40 "$B/quern" bench --device cuda --kernels --stack llama-8b --types Q4_K_M || st=1
  done
} 2>&1 | tee "$OUT/kernels.txt"
{
  for t in Q4_K_M Q4_0 Q8_0; do
    for e in "QUERN_CUDA_PDL=1" "QUERN_CUDA_PDL=0"; do
      [ $t = Q8_0 ] && [ $e = QUERN_CUDA_PDL=0 ] && continue
      echo "-- synthetic llama-8b $t $e"
      env $e timeout 45 "$B/quern" bench --synthetic llama-8b --type $t --device cuda --synthetic-dir /dev/shm \
        -p 512 -n 128 -r 2 || st=1
      rm -f /dev/shm/quern-synthetic-*
    done
  done
} 2>&1 | tee "$OUT/decode.txt"
ls -la /dev/shm
echo "final status $st"
exit $st
