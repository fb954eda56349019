#!/usr/bin/env bash
# results/act16 call 2: joins the Q4_K_M reference file (SmolLM2-135M, `quern
# quantize --type Q4_K_M`) from the part call 1 left in /dev/shm and the one
# carried here, then `quern verify F -r F --device cuda` (the file on the GPU
# against itself on the CPU backend), 4 chunks of 512 tokens of wiki.test.raw,
# at 8-bit and at 16-bit activation codes. Stashes the first part of the AWQ
# folder for call 3/4. Uses call 1's binary in /dev/shm/qa.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
B=/dev/shm/qa/bin
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
cp "$D"/awq.part-a /dev/shm/ 2>/dev/null
cat /dev/shm/q4km.part-a "$D"/q4km.part-b > /dev/shm/q4km.gguf || exit 1
sha256sum /dev/shm/q4km.gguf | tee "$OUT/q4km-sha256.txt"
st=0
for bits in 8 16; do
  echo "-- Q4_K_M act-bits $bits"
  s=$(date +%s)
  timeout 150 "$B/quern" verify /dev/shm/q4km.gguf -r /dev/shm/q4km.gguf --device cuda --text "$D/wiki.test.raw" \
    --ctx 512 --chunks 4 --max-kld 1e-3 --min-top1 0.99 --act-bits $bits --json "$OUT/verify-q4km-$bits.json" 2>&1 | tail -12
  echo "exit ${PIPESTATUS[0]}, $(( $(date +%s) - s )) s"
done 2>&1 | tee "$OUT/q4km.txt"
echo "final status $st"
exit $st
