#!/usr/bin/env bash
# Benchmark `quern quantize` against llama.cpp's llama-quantize, side by side in one run,
# same thread count, same input file.
#
#   bench/quantize.sh
#
# Models:
#   smollm2-135m  input .cache/reference/smollm2-f32.gguf to both tools; quern also straight
#                 from the HF bf16 folder .cache/reference/smollm2-135m (convert + quantise in one pass)
#   llama-1.1b    input: a BF16 GGUF made by `quern convert .cache/synthetic/llama-1.1b --outtype bf16`
#                 (untimed), the same file to both tools
# Types: TYPES (default: Q8_0 Q4_0 Q4_K_M Q6_K IQ4_XS), SYNTH_TYPES for the 1.1B model (default:
# TYPES; llama-quantize's IQ4_XS takes minutes there); threads: THREADS (default 2).
#   quern       quern quantize IN -o OUT --type TYPE --threads N --quiet
#   llama.cpp   llama-quantize IN OUT TYPE N
# Each run under /usr/bin/time -v (wall, peak RSS); output to .cache/bench-tmp on the same disk,
# deleted after the run; inputs read once untimed first (warm page cache); `sync` between runs.
# Wall time is the best of REPEATS runs (default 1). Prints a markdown table and writes it to
# bench/results/quantize.md.
#
# Needs: target/release/quern (or QUERN_BIN), .cache/llama.cpp/build/bin/llama-quantize
# (testdata/build-llama-cpp.sh), testdata/reference-model.sh, testdata/make-synthetic-llama.py,
# GNU time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUERN="${QUERN_BIN:-$REPO/target/release/quern}"
LQ="${LLAMA_QUANTIZE:-$REPO/.cache/llama.cpp/build/bin/llama-quantize}"
# PIN: a command prefix both tools run under, e.g. "taskset -c 0,1".
read -r -a PIN <<< "${PIN:-}"
REPEATS="${REPEATS:-1}"
THREADS="${THREADS:-2}"
TYPES="${TYPES:-Q8_0 Q4_0 Q4_K_M Q6_K IQ4_XS}"
SYNTH_TYPES="${SYNTH_TYPES:-$TYPES}"
RESULTS="${RESULTS_DIR:-$REPO/bench/results}"
TMP="${BENCH_TMP:-$REPO/.cache/bench-tmp}"
# Elsewhere (the GPU host, where the real weights cannot travel): REF_HF a same-shaped
# synthetic folder, REF_F32 its F32 conversion; REF_LABEL says so in the table.
REF_HF="${REF_HF:-$REPO/.cache/reference/smollm2-135m}"
REF_F32="${REF_F32:-$REPO/.cache/reference/smollm2-f32.gguf}"
REF_LABEL="${REF_LABEL:-the reference model}"
SYNTH="${SYNTH:-$REPO/.cache/synthetic/llama-1.1b}"

die() { echo "bench/quantize.sh: $*" >&2; exit 1; }
[ -x "$QUERN" ] || die "no quern binary at $QUERN (cargo build --release -p quern)"
[ -x "$LQ" ] || die "no llama-quantize at $LQ (testdata/build-llama-cpp.sh)"
[ -x /usr/bin/time ] || die "GNU time missing (apt-get install time)"
[ -f "$REF_F32" ] && [ -f "$REF_HF/config.json" ] || die "reference model missing (testdata/reference-model.sh)"
[ -f "$SYNTH/config.json" ] || die "synthetic model missing (testdata/make-synthetic-llama.py)"

mkdir -p "$RESULTS" "$TMP"
RUNDIR="$(mktemp -d "$TMP/quantize.XXXXXX")"
trap 'rm -rf "$RUNDIR"' EXIT
ROWS="$RUNDIR/rows.tsv"
: > "$ROWS"

echo "== making the 1.1B BF16 GGUF (untimed)" >&2
SYNTH_BF16="$RUNDIR/llama-1.1b-bf16.gguf"
"$QUERN" convert "$SYNTH" -o "$SYNTH_BF16" --outtype bf16 --quiet

# run TOOL MODEL INPUT_LABEL TYPE OUT -- CMD...: best wall of REPEATS; row "tool model input type wall rss bytes"
run() {
    local tool="$1" model="$2" input="$3" ty="$4" out="$5"; shift 6
    local best="" best_rss="" bytes=0 i t0 t1 wall rss
    for ((i = 0; i < REPEATS; i++)); do
        rm -f "$out"; sync
        t0=$(date +%s.%N)
        if ! "${PIN[@]}" /usr/bin/time -v -o "$RUNDIR/time.txt" "$@" >"$RUNDIR/log.txt" 2>&1; then
            tail -n 20 "$RUNDIR/log.txt" >&2
            die "$tool on $model ($ty) failed"
        fi
        t1=$(date +%s.%N)
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$RUNDIR/time.txt")
        bytes=$(stat -c %s "$out")
        echo "  $tool $model ($input) $ty: ${wall} s, peak RSS $((rss / 1024)) MB, $bytes bytes" >&2
        if [ -z "$best" ] || awk -v a="$wall" -v b="$best" 'BEGIN { exit !(a < b) }'; then best="$wall" best_rss="$rss"; fi
    done
    rm -f "$out"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$model" "$input" "$ty" "$best" "$best_rss" "$bytes" >> "$ROWS"
}

OUT="$RUNDIR/out.gguf"
echo "== smollm2-135m" >&2
cat "$REF_F32" "$REF_HF"/*.safetensors > /dev/null  # warm the page cache (untimed)
for ty in $TYPES; do
    run llama.cpp smollm2-135m f32.gguf "$ty" "$OUT" -- "$LQ" "$REF_F32" "$OUT" "$ty" "$THREADS"
    run quern smollm2-135m f32.gguf "$ty" "$OUT" -- "$QUERN" quantize "$REF_F32" -o "$OUT" --type "$ty" --threads "$THREADS" --quiet
    run quern smollm2-135m "HF bf16" "$ty" "$OUT" -- "$QUERN" quantize "$REF_HF" -o "$OUT" --type "$ty" --threads "$THREADS" --quiet
done
echo "== llama-1.1b" >&2
cat "$SYNTH_BF16" > /dev/null
for ty in $SYNTH_TYPES; do
    run llama.cpp llama-1.1b bf16.gguf "$ty" "$OUT" -- "$LQ" "$SYNTH_BF16" "$OUT" "$ty" "$THREADS"
    run quern llama-1.1b bf16.gguf "$ty" "$OUT" -- "$QUERN" quantize "$SYNTH_BF16" -o "$OUT" --type "$ty" --threads "$THREADS" --quiet
done

CPU="$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
QV="$("$QUERN" --version 2>/dev/null || echo quern)"
LV="$(cat "$REPO/.cache/llama.cpp/src/.quern-source-version" 2>/dev/null || echo '?')"
LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$ROWS" "$CPU" "$(nproc)" "$QV" "$LV" "$REPEATS" "$THREADS" "$LOAD" "${PIN[*]:-none}" "$REF_LABEL" > "$RUNDIR/quantize.md" <<'EOF'
import sys, datetime
rows_path, cpu, ncpu, qv, lv, reps, threads, load, pin, ref_label = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(rows_path) if l.strip()]
ref = {(r[1], r[3]): (float(r[4]), int(r[6])) for r in rows if r[0] == "llama.cpp"}
print("## quantize: quern vs llama.cpp llama-quantize\n")
print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu}, {ncpu} cores; {qv}; "
      f"llama.cpp vendored in llama-cpp-python {lv} (built without AMX); {threads} threads for both; warm page cache; "
      f"output on the same disk; best of {reps} runs; pinned with `{pin}`; load average at the end {load}; "
      f"smollm2-135m is {ref_label}. "
      "Command: `bench/quantize.sh`.\n")
print("| tool | model | input | type | wall s | peak RSS MB | output bytes | wall / llama.cpp | size / llama.cpp |")
print("|---|---|---|---|---:|---:|---:|---:|---:|")
for tool, model, inp, ty, w, rss, size in rows:
    w, size = float(w), int(size)
    rw, rs = ref[(model, ty)]
    print(f"| {tool} | {model} | {inp} | {ty} | {w:.2f} | {int(rss) / 1024:.0f} | {size} | {w / rw:.3f} | {size / rs:.5f} |")
print("\nsmollm2-135m f32.gguf: `.cache/reference/smollm2-f32.gguf` (independent F32); HF bf16: the reference "
      "folder, converted and quantised by quern in one pass. llama-1.1b: synthetic TinyLlama-shaped model "
      "(random weights), BF16 GGUF made by `quern convert` (untimed), the same file to both tools. "
      "Target (DESIGN §4): wall ≤ 0.7× llama.cpp's, same output size.")
EOF
cp "$RUNDIR/quantize.md" "$RESULTS/quantize.md"
cat "$RESULTS/quantize.md"
