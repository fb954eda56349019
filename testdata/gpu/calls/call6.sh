#!/usr/bin/env bash
# Device call 6 (after call 5 carried the first part of the model): where the
# Q4_K_M file's GPU/CPU difference comes from. The reference model quantised to
# several single formats and mixes, each verified on the GPU against the CPU;
# Q4_K_M also with the host doing every non-matmul op (QUERN_VERIFY_HOST_OPS=1)
# and with the older kernels over the file layout (QUERN_CUDA_PACKED=0).
set -u
D=$(cd "$(dirname "$0")" && pwd)
cd "$D" || exit 1
for f in *.gz; do [ -e "$f" ] && gunzip -f "$f"; done
chmod +x quern cuda_kernels cuda_model cuda_decode runtime_lib
OUT=${OUT:-/tmp/quern-gpu-out}
src=/dev/shm/real-src.gguf
cat $(for i in 0 1 2 3; do ls "$D"/../m*/part-$i 2>/dev/null; done) >"$src"
sha256sum "$src"
v() { # FILE LABEL [ENV...]
  local f=$1 label=$2; shift 2
  echo "-- $label $*"
  env "$@" timeout 90 "$D/quern" verify "$f" -r "$f" --device cuda --text "$D/wiki.test.raw" --ctx 512 --chunks 4 -q \
    2>&1 | grep -E "KLD mean|top-1|PPL|^  (Q|F|B)[0-9A-Z_]+ +[0-9]+ "
}
{
for t in Q4_K_M Q5_0 Q4_0 Q6_K Q4_K_S Q4_1 Q5_1; do
  "$D/quern" quantize "$src" -o /dev/shm/r-$t.gguf --type $t --allow-requantize -q || echo "quantize $t failed"
done
v /dev/shm/r-Q4_K_M.gguf Q4_K_M-hostops QUERN_VERIFY_HOST_OPS=1
v /dev/shm/r-Q4_K_M.gguf Q4_K_M-packed0 QUERN_CUDA_PACKED=0
for t in Q5_0 Q4_0 Q6_K Q4_K_S; do v /dev/shm/r-$t.gguf $t; done
for t in Q4_1 Q5_1; do v /dev/shm/r-$t.gguf $t; done
} 2>&1 | tee "$OUT/diagnose.txt"
