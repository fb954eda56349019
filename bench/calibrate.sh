#!/usr/bin/env bash
# `quern calibrate` beside llama.cpp's `llama-imatrix`: same model file, text, chunks,
# context and threads, one after the other, each under /usr/bin/time -v.
#
#   bench/calibrate.sh [MODEL]
#
# MODEL: default the F32 reference GGUF (.cache/reference/smollm2-f32.gguf).
# CHUNKS (default 20), CTX (default 512), THREADS (default 2), TEXT (default Tiny
# Shakespeare), PIN (a command prefix for both, e.g. "taskset -c 0,1"), OUT (default
# .cache/calib/bench). Both imatrix files are kept there, and their per-tensor agreement
# is printed (bench/compare_imatrix.py).
#   quern        quern calibrate MODEL --text TEXT --ctx CTX --chunks N --threads T -o ours.imatrix.gguf
#   llama.cpp    llama-imatrix -m MODEL -f TEXT -c CTX --chunks N -t T -o theirs.imatrix.gguf
# (llama-imatrix also computes every token's logits and the perplexity; it has no switch
# to skip them, so that is part of its time.)
#
# Needs: target/release/quern (or QUERN_BIN), .cache/llama.cpp/build/bin/llama-imatrix
# (testdata/build-llama-cpp.sh --no-venv), python3 with numpy and gguf (the .venv).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUERN="${QUERN_BIN:-$REPO/target/release/quern}"
LI="${LLAMA_IMATRIX:-$REPO/.cache/llama.cpp/build/bin/llama-imatrix}"
PY="${QUERN_PYTHON:-$REPO/.venv/bin/python}"
MODEL="${1:-$REPO/.cache/reference/smollm2-f32.gguf}"
TEXT="${TEXT:-$REPO/../shared/data/tinyshakespeare/input.txt}"
CHUNKS="${CHUNKS:-20}"
CTX="${CTX:-512}"
THREADS="${THREADS:-2}"
PIN="${PIN:-}"
OUT="${OUT:-$REPO/.cache/calib/bench}"

die() { echo "bench/calibrate.sh: $*" >&2; exit 1; }
[ -x "$QUERN" ] || die "no quern binary at $QUERN (cargo build --release -p quern)"
[ -x "$LI" ] || die "no llama-imatrix at $LI (testdata/build-llama-cpp.sh --no-venv)"
[ -e "$MODEL" ] || die "no model at $MODEL"
[ -f "$TEXT" ] || die "no text at $TEXT"
mkdir -p "$OUT"

# timed NAME CMD...: runs CMD under /usr/bin/time -v, prints "wall cpu rss_mb".
timed() {
    local name="$1"; shift
    /usr/bin/time -v -o "$OUT/$name.time" $PIN "$@" > "$OUT/$name.log" 2>&1 \
        || { tail -20 "$OUT/$name.log" >&2; die "$name failed (log: $OUT/$name.log)"; }
    awk -F': ' '
        /Elapsed \(wall clock\)/ { n = split($2, p, ":"); w = 0; for (i = 1; i <= n; i++) w = w * 60 + p[i] }
        /User time/ { u = $2 } /System time/ { s = $2 } /Maximum resident/ { r = $2 / 1024 }
        END { printf "%.1f %.1f %.0f\n", w, u + s, r }' "$OUT/$name.time"
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
read -r qw qc qr < <(timed quern "$QUERN" calibrate "$MODEL" --text "$TEXT" --ctx "$CTX" \
    --chunks "$CHUNKS" --threads "$THREADS" -o "$OUT/ours.imatrix.gguf" --quiet)
echo "load between: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
read -r lw lc lr < <(timed llama "$LI" -m "$MODEL" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" \
    -t "$THREADS" -o "$OUT/theirs.imatrix.gguf")
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

echo
echo "$(basename "$MODEL"), $CHUNKS chunks × $CTX tokens of $(basename "$TEXT"), $THREADS threads${PIN:+, $PIN}"
echo
echo "| tool | wall s | user+sys s | peak RSS MB |"
echo "|---|---:|---:|---:|"
echo "| quern calibrate | $qw | $qc | $qr |"
echo "| llama-imatrix | $lw | $lc | $lr |"
awk -v a="$qw" -v b="$lw" -v c="$qc" -v d="$lc" \
    'BEGIN { printf "| ratio quern / llama.cpp | %.2f | %.2f | |\n", a / b, c / d }'
echo
"$PY" "$REPO/bench/compare_imatrix.py" "$OUT/ours.imatrix.gguf" "$OUT/theirs.imatrix.gguf" || true
