#!/usr/bin/env bash
# Builds, on this machine (no CUDA needed), what run.sh runs on the GPU machine and
# copies it into DEST: the release binary, the runtime's test executables, and the
# scripts. The device tool then carries DEST (git-ignored, inside the checkout it
# sends) and runs `bash DEST/run.sh`.
#
#   testdata/gpu/stage.sh DEST
set -euo pipefail
DEST=${1:?usage: stage.sh DEST}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
mkdir -p "$DEST"
nice -n 10 cargo build --release -p quern
nice -n 10 cargo test --release -p quern-runtime --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, shutil, sys
dest = sys.argv[1]
want = {"cuda_kernels": "cuda_kernels", "cuda_model": "cuda_model", "cuda_decode": "cuda_decode", "quern_runtime": "runtime_lib"}
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    name = m["target"]["name"]
    kinds = m["target"]["kind"]
    if name in want and ("test" in kinds or "lib" in kinds):
        shutil.copy(m["executable"], f"{dest}/{want[name]}")
        print("test executable", name, "->", want[name])
' "$DEST"
cp target/release/quern "$DEST/quern"
cp testdata/gpu/run.sh testdata/gpu/torch_gemv.py testdata/gpu/torch_prefill.py testdata/gpu/summary.py testdata/gpu/sweep.py "$DEST/"
# Line tables are not needed there; the carried tree is limited to 64 MiB.
strip --strip-debug "$DEST/quern" "$DEST/cuda_kernels" "$DEST/cuda_model" "$DEST/cuda_decode" "$DEST/runtime_lib"
du -sh "$DEST"
