#!/usr/bin/env bash
# The CPU-side benchmarks on the GPU-lending host (idle, 16 cores), in one device call,
# for when the 2-core development machine is too busy to time anything:
#   runtime    bench/runtime.sh        quern bench vs llama-bench, 2 pinned cores
#   quantize   bench/quantize.sh       quern quantize vs llama-quantize, 2 pinned cores
#   calibrate  bench/calibrate.sh      quern calibrate vs llama-imatrix (when present)
#   registry   testdata/registry/bench.sh   push/pull vs docker-registry, curl and cp
# The real reference weights cannot travel (64 MiB per call), so models of the same
# shapes are made there with random weights (testdata/make-synthetic-llama.py); speed
# does not depend on the values. Binaries travel xz-compressed to fit the limit.
#
# Here:  bash bench/cpu-on-device.sh stage [PARTS]   (fills .device/cpu, git-ignored)
# There: bash bench/cpu-on-device.sh run [PARTS]     (device tool, carry .device/cpu)
# PARTS: any of runtime quantize calibrate registry (default: all); they run in the order
# runtime, calibrate, registry, quantize (the longest last, so a time limit cuts only it).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
D="$REPO/.device/cpu"
MODE="${1:-}"
shift || true
PARTS="${*:-runtime quantize calibrate registry}"
has() { [[ " $PARTS " == *" $1 "* ]]; }

case "$MODE" in
stage)
    rm -rf "$D"; mkdir -p "$D/bin" "$D/ref"
    strip -o "$D/bin/quern" "$REPO/target/release/quern"
    B="$REPO/.cache/llama.cpp/build/bin"
    has runtime && cp "$B/llama-bench" "$D/bin/"
    has quantize && cp "$B/llama-quantize" "$D/bin/"
    has calibrate && cp "$B/llama-imatrix" "$D/bin/"
    has registry && cp /usr/bin/docker-registry "$D/bin/"
    for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json generation_config.json; do
        [ -f "$REPO/.cache/reference/smollm2-135m/$f" ] && cp "$REPO/.cache/reference/smollm2-135m/$f" "$D/ref/"
    done
    has calibrate && cp "$REPO/../shared/data/tinyshakespeare/input.txt" "$D/calib.txt"
    (cd "$D" && tar -cJf bin.tar.xz bin && rm -rf bin)
    du -sh "$D"
    ;;
run)
    O="${OUT:-/tmp/cpu-out}"; mkdir -p "$O"
    W=/tmp/cpubench; mkdir -p "$W"
    tar -xJf "$D/bin.tar.xz" -C "$W"
    BIN="$W/bin"
    lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | cut -c1-300 > "$O/cpu.txt"
    need_models() {
        [ -d "$W/s135" ] && return 0
        python3 "$REPO/testdata/make-synthetic-llama.py" "$W/s135" --preset smollm2-135m --shards 1 --reference "$D/ref" >/dev/null
        python3 "$REPO/testdata/make-synthetic-llama.py" "$W/l11" --preset tinyllama-1.1b --reference "$D/ref" >/dev/null
    }
    if has runtime; then
        need_models
        files=()
        for t in Q8_0 Q4_0 Q4_K_M; do "$BIN/quern" quantize "$W/s135" -o "$W/smollm2-shape-$t.gguf" --type "$t" --quiet --no-provenance; files+=("$W/smollm2-shape-$t.gguf"); done
        for t in Q4_K_M Q8_0; do "$BIN/quern" quantize "$W/l11" -o "$W/llama-1.1b-$t.gguf" --type "$t" --quiet --no-provenance; files+=("$W/llama-1.1b-$t.gguf"); done
        QUERN_BIN="$BIN/quern" LLAMA_BENCH="$BIN/llama-bench" PIN="taskset -c 0,1" \
            RESULTS_MD="$O/runtime.md" bash "$REPO/bench/runtime.sh" "${files[@]}" || echo "runtime bench failed" >&2
        rm -f "$W"/*.gguf
    fi
    if has calibrate && [ -f "$REPO/bench/calibrate.sh" ]; then
        need_models
        [ -f "$W/s135-f32.gguf" ] || "$BIN/quern" convert "$W/s135" -o "$W/s135-f32.gguf" --outtype f32 --quiet --no-provenance
        QUERN_BIN="$BIN/quern" LLAMA_IMATRIX="$BIN/llama-imatrix" PIN="taskset -c 0,1" \
            TEXT="$D/calib.txt" CHUNKS="${CALIB_CHUNKS:-8}" OUT="$W/calib" QUERN_PYTHON=python3 \
            bash "$REPO/bench/calibrate.sh" "$W/s135-f32.gguf" > "$O/calibrate.md" 2>&1 || echo "calibrate bench failed" >&2

    fi
    if has registry; then
        PATH="$BIN:$PATH" DOCKER_REGISTRY="$BIN/docker-registry" BENCH_DIR="$W/reg" \
            bash "$REPO/testdata/registry/bench.sh" "$BIN/quern" > "$O/registry.md" || echo "registry bench failed" >&2
        rm -rf "$W/reg"
    fi
    if has quantize; then
        need_models
        "$BIN/quern" convert "$W/s135" -o "$W/s135-f32.gguf" --outtype f32 --quiet --no-provenance
        QUERN_BIN="$BIN/quern" LLAMA_QUANTIZE="$BIN/llama-quantize" PIN="taskset -c 0,1" REPEATS=2 \
            REF_HF="$W/s135" REF_F32="$W/s135-f32.gguf" SYNTH="$W/l11" RESULTS_DIR="$O" BENCH_TMP="$W/qtmp" \
            REF_LABEL="a SmolLM2-135M-shaped model with random weights (the real one cannot travel)" \
            bash "$REPO/bench/quantize.sh" || echo "quantize bench failed" >&2
    fi
    ls -la "$O"
    ;;
*) echo "usage: $0 stage|run [runtime quantize calibrate registry]" >&2; exit 2 ;;
esac
