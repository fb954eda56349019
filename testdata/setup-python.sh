#!/usr/bin/env bash
# Create or update the Python venv that quern's tests use (idempotent).
#   testdata/setup-python.sh [VENV]        (default VENV: <repo>/.venv)
# Installs pinned numpy, gguf, tokenizers, safetensors, pytest, jsonschema and
# llama-cpp-python. Packages already installed at the pinned version are skipped,
# so a second run takes a second or two. llama-cpp-python builds llama.cpp from
# source (several minutes on 2 cores; CMAKE_BUILD_PARALLEL_LEVEL defaults to nproc)
# into a wheel kept in ~/.cache/quern/wheels/ (QUERN_WHEEL_CACHE), keyed by its build
# flags and the CPU, so a re-install on the same machine (a fresh clone too) is instant.
# llama.cpp is built -march=native minus AMX: on Intel CPUs with AMX (this VM) ggml's
# AMX path segfaults on the first decode of any quantised (Q4_1, Q8_0, ...) model.
# A venv whose llama-cpp-python was built otherwise (no stamp) is rebuilt once.
# env: PYTHON  base interpreter for a new venv (default python3, >= 3.10)
#      LLAMA_CMAKE_ARGS  CMAKE_ARGS for llama-cpp-python's build (default: the no-AMX flags)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO/.venv}"
BASE_PY="${PYTHON:-python3}"

# What the tests import, pinned to the versions the suite was written against.
PINS=(
    numpy==2.4.6
    gguf==0.19.0
    tokenizers==0.23.3
    safetensors==0.8.0
    pytest==9.2.0
    jsonschema==4.26.0
    model-signing==1.1.1  # verifies our model.sig (registry tests)
    pyopenssl==26.4.0     # model-signing 1.1.1 imports it without declaring it
    transformers==5.23.0  # AutoConfig reads our AWQ config.json (no torch needed)
    # llama-cpp-python's own dependencies, so its wheel can be installed with --no-deps
    diskcache==5.6.3
    Jinja2==3.1.6
    typing_extensions==4.16.0
)
LLAMA_VER=0.3.36
# Outside the repo so that fresh clones on this machine (CI) reuse the build.
WHEEL_CACHE="${QUERN_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quern/wheels}"
# ggml compiles its AMX backend only under __AMX_INT8__; -mno-amx-int8 keeps the rest of -march=native.
# (no spaces inside an argument, so CMAKE_ARGS needs no quoting)
LLAMA_CMAKE_ARGS="${LLAMA_CMAKE_ARGS:--DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8}"
# Their dependencies, pinned too (pip freeze of a working venv), so installs are reproducible.
CONSTRAINTS="
MarkupSafe==3.0.4
PyYAML==6.0.3
tqdm==4.70.1
requests==2.34.2
certifi==2026.10.18
charset-normalizer==3.5.2
idna==3.20
urllib3==2.8.0
huggingface_hub==2.4.0
filelock==4.2.12
fsspec==2026.9.0
hf-xet==1.8.0
packaging==26.3
iniconfig==2.3.1
pluggy==1.7.0
Pygments==2.21.0
attrs==26.1.0
jsonschema-specifications==2025.9.1
referencing==0.37.0
rpds-py==2026.9.1
truststore==0.10.5
click==8.5.1
h11==0.16.0
httpcore2==2.16.2
httpx2==2.16.2
anyio==4.16.0
"

log() { printf '[setup-python %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
T0=$(date +%s)

if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $("$BASE_PY" -V 2>&1)"
    "$BASE_PY" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# Which pins are not satisfied? (distribution names compared after PEP 503 normalisation)
mapfile -t TODO < <("$PY" - "${PINS[@]}" <<'EOF'
import re, sys
from importlib import metadata
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
have = {norm(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
for spec in sys.argv[1:]:
    name, ver = spec.split("==")
    if have.get(norm(name)) != ver:
        print(spec)
EOF
)

if [ "${#TODO[@]}" -eq 0 ]; then
    log "all pins satisfied in $VENV"
else
    log "installing: ${TODO[*]}"
    CONS="$(mktemp)"
    trap 'rm -f "$CONS"' EXIT
    printf '%s\n' "$CONSTRAINTS" > "$CONS"
    "$PY" -m pip install -c "$CONS" "${TODO[@]}"
fi

# QUERN_MINIMAL_VENV=1 (the README's demo): only what building the reference model needs.
if [ -n "${QUERN_MINIMAL_VENV:-}" ]; then
    log "minimal venv: llama-cpp-python skipped"
    exit 0
fi

# llama-cpp-python: pinned version and built with our flags (recorded in a stamp in the venv)
STAMP="$VENV/.quern-llama-cpp-python"
WANT="$LLAMA_VER $LLAMA_CMAKE_ARGS"
HAVE_VER="$("$PY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)"
if [ "$HAVE_VER" = "$LLAMA_VER" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    log "llama-cpp-python $LLAMA_VER (built with: $LLAMA_CMAKE_ARGS) present"
else
    # Keyed by version, flags and this CPU's feature flags (the build is -march=native).
    KEY="$( { printf '%s\n' "$LLAMA_CMAKE_ARGS"; uname -m; grep -m1 '^flags' /proc/cpuinfo; } | sha256sum | cut -c1-12)"
    WHEELS="$WHEEL_CACHE/llama-cpp-python-$LLAMA_VER-$KEY"
    WHEEL="$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VER"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$WHEEL" ]; then
        log "building llama-cpp-python $LLAMA_VER from source (CMAKE_ARGS=$LLAMA_CMAKE_ARGS) into $WHEELS"
        T1=$(date +%s)
        mkdir -p "$WHEELS"
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" CMAKE_ARGS="$LLAMA_CMAKE_ARGS" \
            "$PY" -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python -w "$WHEELS.tmp.$$" "llama-cpp-python==$LLAMA_VER"
        mv "$WHEELS.tmp.$$"/*.whl "$WHEELS"/ && rmdir "$WHEELS.tmp.$$"
        WHEEL="$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VER"-*.whl | head -n1)"
        log "  built in $(( $(date +%s) - T1 )) s"
    fi
    log "installing $(basename "$WHEEL")"
    "$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL"
    echo "$WANT" > "$STAMP"
fi

"$PY" - <<'EOF'
import gguf, jsonschema, llama_cpp, numpy, pytest, safetensors, tokenizers
print(f"numpy {numpy.__version__}, tokenizers {tokenizers.__version__}, llama_cpp {llama_cpp.__version__}, "
      f"pytest {pytest.__version__}: ok")
EOF
log "ready ($(( $(date +%s) - T0 )) s)"
