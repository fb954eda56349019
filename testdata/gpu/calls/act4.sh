#!/usr/bin/env bash
# results/act16 call 4: joins the AWQ folder's three parts (calls 2-4) and runs
# `quern verify DIR -r DIR --device cuda` at 8-bit and at 16-bit activation
# codes, as act2.sh does for Q4_K_M. Uses call 1's binary in /dev/shm/qa.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
B=/dev/shm/qa/bin
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
cat /dev/shm/awq.part-a /dev/shm/awq.part-b "$D"/awq.part-c | tar xzf - -C /dev/shm || exit 1
sha256sum /dev/shm/awq/model.safetensors | tee "$OUT/awq-sha256.txt"
st=0
for bits in 8 16; do
  echo "-- AWQ act-bits $bits"
  s=$(date +%s)
  timeout 150 "$B/quern" verify /dev/shm/awq -r /dev/shm/awq --device cuda --text "$D/wiki.test.raw" \
    --ctx 512 --chunks 4 --max-kld 1e-3 --min-top1 0.99 --act-bits $bits --json "$OUT/verify-awq-$bits.json" 2>&1 | tail -12
  echo "exit ${PIPESTATUS[0]}, $(( $(date +%s) - s )) s"
done 2>&1 | tee "$OUT/awq.txt"
echo "final status $st"
exit $st
