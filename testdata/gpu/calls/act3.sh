#!/usr/bin/env bash
# results/act16 call 3: carries the second part of the AWQ reference folder
# (SmolLM2-135M, `quern quantize --format awq --group-size 64`, round to
# nearest) into /dev/shm for call 4; runs nothing else.
set -u
D=$(cd "$(dirname "$0")" && pwd)
cp "$D"/awq.part-b /dev/shm/ && ls -la /dev/shm/awq.part-*
