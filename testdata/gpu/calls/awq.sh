#!/usr/bin/env bash
# The AWQ reference folder (SmolLM2-135M, `quern quantize --format awq
# --group-size 64`, round to nearest) on the GPU against the CPU: joins the part
# the previous call of the warm machine left in /dev/shm with the one carried
# here, and runs `quern verify DIR -r DIR --device cuda` (the folder on the
# device-resident pass against itself on the CPU backend), 512-token chunks of
# wiki.test.raw. Uses the binary pdl2.sh left in /dev/shm/qs.
set -u
D=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/quern-gpu-out}
mkdir -p "$OUT"
B=/dev/shm/qs/bin
export QUERN_CUDA_CACHE=/tmp/quern-cuda-cache
cat /dev/shm/awq.part-a "$D"/awq.part-b | tar xzf - -C /dev/shm || exit 1
sha256sum /dev/shm/awq-rtn/model.safetensors | tee "$OUT/awq-sha256.txt"
st=0
for c in 4; do
  timeout 200 "$B/quern" verify /dev/shm/awq-rtn -r /dev/shm/awq-rtn --device cuda --text "$D/wiki.test.raw" \
    --ctx 512 --chunks $c --max-kld 1e-3 --min-top1 0.99 --json "$OUT/verify-awq.json" 2>&1 | tail -40 || st=1
done | tee "$OUT/awq.txt"
echo "final status $st"
exit $st
