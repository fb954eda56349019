#!/usr/bin/env bash
# `quern bench` beside llama.cpp's `llama-bench` on the same GGUF files, same threads,
# interleaved per file (ours, then theirs) so both see the same machine state.
#
#   bench/runtime.sh [FILE...]
#
# Default files: the reference model (SmolLM2-135M) in Q8_0, Q4_0 and Q4_K_M, and the
# synthetic 1.1B model in Q4_K_M and Q8_0, made with `quern quantize` from the HF folders
# (untimed, kept in .cache/bench-runtime/). THREADS (default 2), REPS (default 3),
# PP (default 128), TG (default 64), LLAMA_BENCH (its path), PIN (a prefix such as
# "taskset -c 0,1"), RESULTS_MD (default bench/results/runtime.md).
#   quern        quern bench FILE --threads T -p PP -n TG -r REPS --json
#   llama.cpp    llama-bench -m FILE -t T -p PP -n TG -r REPS -o json
# Prints a markdown table (and writes bench/results/runtime.md): tokens/s mean ± sd,
# ratios ours/theirs, and the decode floor (weight bytes per token over the memory read
# bandwidth `quern bench` measures with the same threads).
#
# Needs: target/release/quern (or QUERN_BIN), .cache/llama.cpp/build/bin/llama-bench
# (testdata/build-llama-cpp.sh --no-venv), testdata/reference-model.sh,
# testdata/make-synthetic-llama.py (for the 1.1B files), python3.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUERN="${QUERN_BIN:-$REPO/target/release/quern}"
LB="${LLAMA_BENCH:-$REPO/.cache/llama.cpp/build/bin/llama-bench}"
# PIN: a command prefix for both tools, e.g. "taskset -c 0,1" on a larger machine.
PIN="${PIN:-}"
THREADS="${THREADS:-2}"
REPS="${REPS:-3}"
PP="${PP:-128}"
TG="${TG:-64}"
WORK="$REPO/.cache/bench-runtime"
RESULTS="$REPO/bench/results"

die() { echo "bench/runtime.sh: $*" >&2; exit 1; }
[ -x "$QUERN" ] || die "no quern binary at $QUERN (cargo build --release -p quern)"
[ -x "$LB" ] || die "no llama-bench at $LB (testdata/build-llama-cpp.sh --no-venv)"
mkdir -p "$WORK" "$RESULTS"

mk() { # mk OUT SRC TYPE
    [ -f "$1" ] || "$QUERN" quantize "$2" -o "$1" --type "$3" --quiet --no-provenance
}
if [ $# -eq 0 ]; then
    REF="$REPO/.cache/reference/smollm2-135m"
    SYN="$REPO/.cache/synthetic/llama-1.1b"
    [ -f "$REF/config.json" ] || die "reference model missing (testdata/reference-model.sh)"
    set --
    for t in Q8_0 Q4_0 Q4_K_M; do mk "$WORK/smollm2-$t.gguf" "$REF" "$t"; set -- "$@" "$WORK/smollm2-$t.gguf"; done
    if [ -f "$SYN/config.json" ]; then
        for t in Q4_K_M Q8_0; do mk "$WORK/llama-1.1b-$t.gguf" "$SYN" "$t"; set -- "$@" "$WORK/llama-1.1b-$t.gguf"; done
    else
        echo "note: $SYN missing (testdata/make-synthetic-llama.py): 1.1B rows skipped" >&2
    fi
fi

ROWS="$(mktemp)"
trap 'rm -f "$ROWS"' EXIT
for f in "$@"; do
    echo "== $(basename "$f")" >&2
    ours="$($PIN "$QUERN" bench "$f" --threads "$THREADS" -p "$PP" -n "$TG" -r "$REPS" --json)"
    theirs="$($PIN "$LB" -m "$f" -t "$THREADS" -p "$PP" -n "$TG" -r "$REPS" -o json 2>/dev/null)"
    python3 - "$f" "$ours" "$theirs" >> "$ROWS" <<'EOF'
import json, os, sys
f, ours, theirs = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
lb = {("pp" if r["n_prompt"] else "tg"): (r["avg_ts"], r["stddev_ts"]) for r in theirs}
pp, tg = ours["pp_tokens_per_s"], ours["tg_tokens_per_s"]
floor = ours.get("tg_floor_tokens_per_s") or float("nan")
print("\t".join(str(x) for x in [
    os.path.basename(f), os.path.getsize(f) / 1e6, pp["mean"], pp["sd"], lb["pp"][0], lb["pp"][1],
    tg["mean"], tg["sd"], lb["tg"][0], lb["tg"][1], floor, (ours.get("read_bandwidth_bytes_per_s") or 0) / 1e9]))
EOF
done

python3 - "$ROWS" "$THREADS" "$PP" "$TG" "$REPS" <<'EOF' | tee "${RESULTS_MD:-$RESULTS/runtime.md}"
import sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
t, pp, tg, reps = sys.argv[2:6]
print(f"threads {t}, pp{pp} / tg{tg}, {reps} repetitions each (mean ± sd); floor = weight bytes per token over measured read bandwidth\n")
print(f"| file | MB | quern pp{pp} | llama-bench pp{pp} | pp ratio | quern tg{tg} | llama-bench tg{tg} | tg ratio | floor t/s (GB/s) | quern tg / floor | llama tg / floor |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    name, mb, p, ps, lp, lps, g, gs, lg, lgs, fl, bw = r[0], *map(float, r[1:])
    print(f"| {name} | {mb:.1f} | {p:.1f} ± {ps:.1f} | {lp:.1f} ± {lps:.1f} | {p/lp:.2f} | {g:.1f} ± {gs:.1f} | "
          f"{lg:.1f} ± {lgs:.1f} | {g/lg:.2f} | {fl:.0f} ({bw:.1f}) | {g/fl:.0%} | {lg/fl:.0%} |")
EOF
