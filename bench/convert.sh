#!/usr/bin/env bash
# Benchmark `quern convert` against llama.cpp's convert_hf_to_gguf.py and against
# copying the same bytes, side by side in one run on this machine.
#
#   bench/convert.sh [MODEL_DIR...]
#
# Default models: the reference SmolLM2-135M (.cache/reference/smollm2-135m) and the
# synthetic 1.1B Llama (.cache/synthetic/llama-1.1b), both bf16 HF folders.
# For each model: the safetensors are read once untimed (warm page cache), then
#   cp          cp of the *.safetensors files into the temp dir
#   quern       quern convert MODEL -o OUT --outtype {bf16,q8_0} --quiet
#   llama.cpp   python convert_hf_to_gguf.py MODEL --outfile OUT --outtype {bf16,q8_0}
# each under /usr/bin/time -v (peak RSS; peak anonymous memory sampled from /proc), output to a temp dir on the same disk
# (.cache/bench-tmp), deleted after each run, `sync` (untimed) between runs.
# Wall time is the best of REPEATS runs (default 1; LLAMA_REPEATS for llama.cpp, default 1).
# Prints a markdown table on stdout and writes it to bench/results/convert.md.
#
# Needs: target/release/quern (or QUERN_BIN), testdata/build-llama-cpp.sh --no-tools
# (the converter's venv), testdata/reference-model.sh, testdata/make-synthetic-llama.py,
# GNU time (apt-get install time).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUERN="${QUERN_BIN:-$REPO/target/release/quern}"
BPY="$REPO/.cache/bench-venv/bin/python"
CONVERTER="$REPO/.cache/llama.cpp/src/convert_hf_to_gguf.py"
REPEATS="${REPEATS:-1}"
LLAMA_REPEATS="${LLAMA_REPEATS:-1}"
OUTTYPES="${OUTTYPES:-bf16 q8_0}"
RESULTS="$REPO/bench/results"
TMP="$REPO/.cache/bench-tmp"

if [ "$#" -gt 0 ]; then MODELS=("$@"); else
    MODELS=("$REPO/.cache/reference/smollm2-135m" "$REPO/.cache/synthetic/llama-1.1b")
fi

die() { echo "bench/convert.sh: $*" >&2; exit 1; }
[ -x "$QUERN" ] || die "no quern binary at $QUERN (cargo build --release -p quern)"
[ -x "$BPY" ] && [ -f "$CONVERTER" ] || die "no llama.cpp converter (run testdata/build-llama-cpp.sh --no-tools)"
[ -x /usr/bin/time ] || die "GNU time missing (apt-get install time)"
for m in "${MODELS[@]}"; do [ -f "$m/config.json" ] || die "$m is not a model folder"; done

mkdir -p "$RESULTS" "$TMP"
RUNDIR="$(mktemp -d "$TMP/run.XXXXXX")"
trap 'rm -rf "$RUNDIR"' EXIT
ROWS="$RUNDIR/rows.tsv"
: > "$ROWS"

# peak_anon PID: poll the RssAnon (anonymous resident memory, kB) of PID's children every
# 20 ms until PID exits; print the maximum seen. Pure bash, so the sampling costs little CPU.
peak_anon() {
    local pid="$1" max=0 c k v
    while kill -0 "$pid" 2>/dev/null; do
        for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
            while read -r k v _; do
                if [ "$k" = RssAnon: ]; then [ "$v" -gt "$max" ] && max="$v"; break; fi
            done 2>/dev/null < /proc/"$c"/status || true  # the child may be gone already
        done
        sleep 0.02
    done
    echo "$max"
}

# run LABEL MODEL OUTTYPE OUTPATH -- CMD...: time one command; append "tool model outtype wall rss_kb out_bytes"
run() {
    local tool="$1" model="$2" outtype="$3" out="$4" reps="$5"; shift 6
    local best="" best_rss="" best_anon="" bytes=0 i t0 t1 wall rss anon tpid
    for ((i = 0; i < reps; i++)); do
        rm -rf "$out"; sync
        t0=$(date +%s.%N)
        /usr/bin/time -v -o "$RUNDIR/time.txt" "$@" >"$RUNDIR/log.txt" 2>&1 &
        tpid=$!
        anon=$(peak_anon "$tpid")
        if ! wait "$tpid"; then
            tail -n 20 "$RUNDIR/log.txt" >&2
            die "$tool on $model ($outtype) failed"
        fi
        t1=$(date +%s.%N)
        wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$RUNDIR/time.txt")
        bytes=$(du -sb "$out" | cut -f1)
        echo "  $tool $model $outtype: ${wall} s, peak RSS $((rss / 1024)) MB, peak anonymous $((anon / 1024)) MB" >&2
        if [ -z "$best" ] || awk -v a="$wall" -v b="$best" 'BEGIN { exit !(a < b) }'; then best="$wall" best_rss="$rss" best_anon="$anon"; fi
    done
    rm -rf "$out"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$model" "$outtype" "$best" "$best_rss" "$bytes" "$best_anon" >> "$ROWS"
}

for m in "${MODELS[@]}"; do
    name="$(basename "$m")"
    echo "== $name" >&2
    cat "$m"/*.safetensors > /dev/null  # warm the page cache (untimed)
    run cp "$name" - "$RUNDIR/copy" "$REPEATS" -- bash -c 'mkdir -p "$1" && cp "$2"/*.safetensors "$1"/' _ "$RUNDIR/copy" "$m"
    # quern fsyncs its output before the rename that publishes it; this is the like-for-like copy.
    run cp+fsync "$name" - "$RUNDIR/copy" "$REPEATS" -- bash -c 'mkdir -p "$1" && cp "$2"/*.safetensors "$1"/ && sync "$1"/*.safetensors' _ "$RUNDIR/copy" "$m"
    for ot in $OUTTYPES; do
        # Like for like with llama.cpp's converter (which records no provenance) ...
        run quern "$name" "$ot" "$RUNDIR/out.gguf" "$REPEATS" -- "$QUERN" convert "$m" -o "$RUNDIR/out.gguf" --outtype "$ot" --quiet --no-provenance
        # ... and quern's default, which also hashes every source file and the output.
        run quern+provenance "$name" "$ot" "$RUNDIR/out.gguf" "$REPEATS" -- "$QUERN" convert "$m" -o "$RUNDIR/out.gguf" --outtype "$ot" --quiet
        run llama.cpp "$name" "$ot" "$RUNDIR/out.gguf" "$LLAMA_REPEATS" -- "$BPY" "$CONVERTER" "$m" --outfile "$RUNDIR/out.gguf" --outtype "$ot"
    done
done

CPU="$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
QV="$("$QUERN" --version 2>/dev/null || echo quern)"
LV="$(cat "$REPO/.cache/llama.cpp/src/.quern-source-version" 2>/dev/null || echo '?')"
LOAD="$(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$ROWS" "$CPU" "$(nproc)" "$QV" "$LV" "$REPEATS" "$LLAMA_REPEATS" "$LOAD" > "$RUNDIR/convert.md" <<'EOF'
import sys, datetime
rows_path, cpu, ncpu, qv, lv, reps, lreps, load = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(rows_path) if l.strip()]
wall = {(r[0], r[1], r[2]): float(r[3]) for r in rows}
cp = {r[1]: float(r[3]) for r in rows if r[0] == "cp"}
cps = {r[1]: float(r[3]) for r in rows if r[0] == "cp+fsync"}
print(f"## convert: quern vs llama.cpp convert_hf_to_gguf.py vs cp\n")
print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu}, {ncpu} cores; {qv}; "
      f"llama.cpp vendored in llama-cpp-python {lv}; warm page cache; output on the same disk; "
      f"best of {reps} (quern, cp) / {lreps} (llama.cpp) runs; load average at the end {load}.\n")
print("| tool | model | outtype | wall s | peak RSS MB | peak anon MB | output MB | ratio to llama.cpp | ratio to cp | ratio to cp+fsync |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for tool, model, ot, w, rss, size, anon in rows:
    w = float(w)
    ref = wall.get(("llama.cpp", model, ot))
    r_l = f"{w / ref:.3f}" if ref and tool != "cp" else "–"
    r_c = f"{w / cp[model]:.2f}" if model in cp else "–"
    r_s = f"{w / cps[model]:.2f}" if model in cps else "–"
    print(f"| {tool} | {model} | {ot} | {w:.2f} | {int(rss) / 1024:.0f} | {int(anon) / 1024:.0f} | {int(size) / 1e6:.1f} | {r_l} | {r_c} | {r_s} |")
print("\npeak RSS: /usr/bin/time -v (includes file pages of memory-mapped inputs); peak anon: RssAnon of the "
      "process, sampled every 20 ms; ratios are of wall time.")
EOF
cp "$RUNDIR/convert.md" "$RESULTS/convert.md"
cat "$RESULTS/convert.md"
