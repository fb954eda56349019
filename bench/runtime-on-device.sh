#!/usr/bin/env bash
# bench/runtime.sh on the GPU-lending host's CPU (idle, 2 cores pinned), for when the
# development machine is too busy to time anything. The real reference model cannot
# travel (the device tool carries 64 MiB), so models of the same shapes are made
# there with random weights (testdata/make-synthetic-llama.py presets smollm2-135m and
# tinyllama-1.1b) and quantised by quern; speed does not depend on the values.
#
# Here:  bash bench/runtime-on-device.sh stage      (fills .device/cpubench, git-ignored)
# There: bash bench/runtime-on-device.sh run        (device tool, carry .device)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
D="$REPO/.device/cpubench"
case "${1:-}" in
stage)
    rm -rf "$D"; mkdir -p "$D/lib" "$D/ref"
    strip -o "$D/quern" "$REPO/target/release/quern"
    for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json generation_config.json; do
        cp "$REPO/.cache/reference/smollm2-135m/$f" "$D/ref/"
    done
    B="$REPO/.cache/llama.cpp/build/bin"
    cp "$B/llama-bench" "$D/"
    # its shared libraries, if the build made any (ours links llama.cpp statically)
    ldd "$B/llama-bench" | awk '/=> \// {print $3}' | { grep -E 'llama|ggml' || true; } | xargs -r -I{} cp {} "$D/lib/"
    du -sh "$D"
    ;;
run)
    W=/tmp/cpubench; mkdir -p "$W"
    python3 "$REPO/testdata/make-synthetic-llama.py" "$W/s135" --preset smollm2-135m --shards 1 --reference "$D/ref" >/dev/null
    python3 "$REPO/testdata/make-synthetic-llama.py" "$W/l11" --preset tinyllama-1.1b --reference "$D/ref" >/dev/null
    files=()
    for t in Q8_0 Q4_0 Q4_K_M; do "$D/quern" quantize "$W/s135" -o "$W/smollm2-shape-$t.gguf" --type "$t" --quiet --no-provenance; files+=("$W/smollm2-shape-$t.gguf"); done
    for t in Q4_K_M Q8_0; do "$D/quern" quantize "$W/l11" -o "$W/llama-1.1b-$t.gguf" --type "$t" --quiet --no-provenance; files+=("$W/llama-1.1b-$t.gguf"); done
    lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | cut -c1-200 > "${OUT:-/tmp}/cpu.txt"
    LD_LIBRARY_PATH="$D/lib" QUERN_BIN="$D/quern" LLAMA_BENCH="$D/llama-bench" PIN="taskset -c 0,1" \
        RESULTS_MD="${OUT:-/tmp}/runtime-device.md" bash "$REPO/bench/runtime.sh" "${files[@]}"
    ;;
*) echo "usage: $0 stage|run" >&2; exit 2 ;;
esac
