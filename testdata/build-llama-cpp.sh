#!/usr/bin/env bash
# Build llama.cpp's command-line tools and its HF->GGUF converter from the exact
# llama.cpp source that the installed llama-cpp-python vendors (idempotent):
#   .cache/llama.cpp/src/          vendor/llama.cpp of the llama-cpp-python sdist
#   .cache/llama.cpp/build/bin/    llama-quantize llama-bench llama-perplexity llama-imatrix
#                                  (Release, CPU only, -march=native)
#   .cache/bench-venv/             python venv that runs src/convert_hf_to_gguf.py
#                                  (torch, transformers, sentencepiece, numpy, vendored gguf-py)
# Run it niced on a shared machine: `nice testdata/build-llama-cpp.sh`.
#
# usage: testdata/build-llama-cpp.sh [--no-tools] [--no-venv]
#   --no-tools  skip the C++ build (the converter benchmark needs only the venv)
#   --no-venv   skip the converter venv (torch etc.; llama-quantize & co. need only the build)
#
# env: QUERN_PYTHON  python of the test venv that has llama-cpp-python (default <repo>/.venv/bin/python)
#      PYTHON        base interpreter for the bench venv (default python3)
#      LLAMA_CPP_PYTHON_VERSION  override the version (default: the one installed in QUERN_PYTHON, else 0.3.36)
#      JOBS          build parallelism (default nproc)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QPY="${QUERN_PYTHON:-$REPO/.venv/bin/python}"
BASE_PY="${PYTHON:-python3}"
ROOT="$REPO/.cache/llama.cpp"
SRC="$ROOT/src"
BUILD="$ROOT/build"
BVENV="$REPO/.cache/bench-venv"
JOBS="${JOBS:-$(nproc)}"
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
TOOLS="llama-quantize llama-bench llama-perplexity llama-imatrix"
# The bench venv's packages: the vendored requirements/requirements-convert_hf_to_gguf.txt
# (torch==2.11.0, transformers==4.57.6, numpy~=2.2.6, sentencepiece<0.3, protobuf<5) pinned,
# plus gguf-py's own dependencies. torch comes from PyPI (CUDA build: large, but runs on CPU).
BENCH_REQS="torch==2.11.0 transformers==4.57.6 numpy==2.2.6 sentencepiece==0.2.1 protobuf==4.25.8 pyyaml==6.0.3 tqdm==4.70.1 requests==2.34.2"

DO_TOOLS=1 DO_VENV=1
for arg in "$@"; do
    case "$arg" in
        --no-tools) DO_TOOLS=0 ;;
        --no-venv) DO_VENV=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[build-llama-cpp %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
step_start() { STEP_T0=$(date +%s); log "$1"; }
step_end() { log "  ... $(( $(date +%s) - STEP_T0 )) s"; }

if [ -n "${LLAMA_CPP_PYTHON_VERSION:-}" ]; then
    VER="$LLAMA_CPP_PYTHON_VERSION"
elif [ -x "$QPY" ] && VER="$("$QPY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null)"; then
    :
else
    VER=0.3.36
fi
log "llama-cpp-python $VER"
mkdir -p "$ROOT"

# 1. the sdist and its vendored llama.cpp
STAMP_SRC="$SRC/.quern-source-version"
if [ -f "$STAMP_SRC" ] && [ "$(cat "$STAMP_SRC")" = "$VER" ]; then
    log "reuse $SRC"
else
    step_start "fetching the llama-cpp-python $VER sdist"
    DL="$ROOT/dl"
    mkdir -p "$DL"
    SDIST="$(ls "$DL"/llama_cpp_python-"$VER".tar.gz 2>/dev/null || true)"
    if [ -z "$SDIST" ]; then
        # pip reuses its HTTP cache when the file was fetched before (e.g. by the source build of llama-cpp-python)
        # (--no-binary names the package only: ':all:' would also build pip's build deps, cmake included, from source)
        "$BASE_PY" -m pip download --no-binary llama-cpp-python --no-deps -q -d "$DL" "llama-cpp-python==$VER"
        SDIST="$(ls "$DL"/llama_cpp_python-"$VER".tar.gz)"
    fi
    step_end
    step_start "extracting vendor/llama.cpp"
    TMP="$ROOT/.src.tmp.$$"
    rm -rf "$TMP"
    mkdir -p "$TMP"
    tar -xzf "$SDIST" -C "$TMP" --strip-components=3 "llama_cpp_python-$VER/vendor/llama.cpp"
    echo "$VER" > "$TMP/.quern-source-version"
    rm -rf "$SRC" "$BUILD"
    mv -T "$TMP" "$SRC"
    step_end
fi

# 2. cmake (from PyPI into the bench venv when the system has none)
if [ ! -x "$BVENV/bin/python" ]; then
    step_start "creating $BVENV"
    "$BASE_PY" -m venv "$BVENV"
    "$BVENV/bin/python" -m pip install -q --upgrade pip
    step_end
fi
if command -v cmake >/dev/null 2>&1; then
    CMAKE="$(command -v cmake)"
else
    if [ ! -x "$BVENV/bin/cmake" ]; then
        step_start "installing cmake from PyPI into $BVENV"
        "$BVENV/bin/python" -m pip install -q "cmake==4.4.4"
        step_end
    fi
    CMAKE="$BVENV/bin/cmake"
fi

# 3. the tools
have_tools() { local t; for t in $TOOLS; do [ -x "$BUILD/bin/$t" ] || return 1; done; }
STAMP_BUILD="$BUILD/.quern-build-version"
if [ "$DO_TOOLS" = 0 ]; then
    log "skipping the C++ tools (--no-tools)"
elif have_tools && [ -f "$STAMP_BUILD" ] && [ "$(cat "$STAMP_BUILD")" = "$VER $NO_AMX" ]; then
    log "reuse $BUILD/bin ($TOOLS)"
else
    step_start "configuring llama.cpp (Release, CPU, native)"
    # -march=native minus AMX: on this machine (Intel with AMX, in a VM) ggml's AMX path
    # segfaults on the first decode of any Q4_1/Q8_0/... model (F32/F16/BF16 are unaffected);
    # the reference machine of DESIGN.md (Zen 4) has no AMX either.
    "$CMAKE" -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
        -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DGGML_CCACHE=OFF \
        -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=OFF >"$ROOT/cmake-configure.log" 2>&1 \
        || { tail -n 40 "$ROOT/cmake-configure.log" >&2; exit 1; }
    step_end
    step_start "building $TOOLS with $JOBS jobs (log: $ROOT/cmake-build.log)"
    # shellcheck disable=SC2086
    "$CMAKE" --build "$BUILD" --config Release -j "$JOBS" --target $TOOLS >"$ROOT/cmake-build.log" 2>&1 \
        || { tail -n 40 "$ROOT/cmake-build.log" >&2; exit 1; }
    have_tools || { log "build finished but a tool is missing"; exit 1; }
    echo "$VER $NO_AMX" > "$STAMP_BUILD"
    step_end
fi

# 4. the converter's python environment
STAMP_VENV="$BVENV/.quern-bench-reqs"
WANT_VENV="$VER $BENCH_REQS"
if [ "$DO_VENV" = 0 ]; then
    log "skipping the converter venv (--no-venv)"
elif [ -f "$STAMP_VENV" ] && [ "$(cat "$STAMP_VENV")" = "$WANT_VENV" ]; then
    log "reuse $BVENV"
else
    step_start "installing $BENCH_REQS and the vendored gguf-py into $BVENV"
    # shellcheck disable=SC2086
    "$BVENV/bin/python" -m pip install -q $BENCH_REQS
    "$BVENV/bin/python" -m pip install -q --no-deps --force-reinstall "$SRC/gguf-py"
    echo "$WANT_VENV" > "$STAMP_VENV"
    step_end
fi

if [ "$DO_VENV" = 1 ]; then
    "$BVENV/bin/python" "$SRC/convert_hf_to_gguf.py" --help >/dev/null \
        || { log "convert_hf_to_gguf.py does not start in $BVENV"; exit 1; }
    log "ready: $BVENV/bin/python $SRC/convert_hf_to_gguf.py"
fi
if [ "$DO_TOOLS" = 1 ]; then
    for t in $TOOLS; do
        "$BUILD/bin/$t" --help >/dev/null 2>&1 || [ $? -le 1 ] || { log "$t does not start"; exit 1; }
    done
    log "ready: $BUILD/bin/{${TOOLS// /,}}"
fi
