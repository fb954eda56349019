#!/usr/bin/env bash
# The calibration quality table of BENCHMARKS.md "AWQ calibration (issue 7)":
# every artifact made, then `quern verify` against the bf16 reference folder on
# wiki.test.raw, then one markdown table on stdout. Unattended and resumable:
# artifacts and verify reports already present under $OUT are reused (delete
# them to redo a row).
#
#   bench/calibration_quality.sh [OUR_IMATRIX]
#
# OUR_IMATRIX: an imatrix made by `quern calibrate` (the "our imatrix" rows; left
# out when not given). Environment: CHUNKS (40), THREADS (2), SAMPLES (AWQ
# calibration samples of 512 tokens, 32), OUT (.cache/awq/bench), TYPES (the
# GGUF types), QUERN (target/release/quern), NICE (10). The reference's logits
# are computed once and kept in $OUT/reference-logits (~50 MB per chunk).
set -euo pipefail
cd "$(dirname "$0")/.."

REF=.cache/reference/smollm2-135m
F32=.cache/reference/smollm2-f32.gguf
CAL=../shared/data/tinyshakespeare/input.txt
W=../shared/data/wikitext-2-raw/wiki.test.raw
LLAMA=.cache/llama.cpp/build/bin
QUERN=${QUERN:-target/release/quern}
OUT=${OUT:-.cache/awq/bench}
CHUNKS=${CHUNKS:-40}
THREADS=${THREADS:-2}
SAMPLES=${SAMPLES:-32}
NICE=${NICE:-10}
TYPES=${TYPES:-"Q2_K Q3_K_M Q4_0 Q4_K_M IQ4_XS"}
OUR_IMATRIX=${1:-}
mkdir -p "$OUT"
run() { nice -n "$NICE" "$@"; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[ -x "$QUERN" ] || { log "building quern"; run cargo build --release -p quern >&2; }
LIMAT=$OUT/llama.imatrix.gguf
if [ ! -s "$LIMAT" ]; then
    log "llama-imatrix on Tiny Shakespeare (64 chunks of 512)"
    run "$LLAMA/llama-imatrix" -m "$F32" -f "$CAL" -c 512 --chunks 64 -t "$THREADS" -o "$LIMAT" \
        >"$OUT/llama-imatrix.log" 2>&1
fi

# Rows: name|artifact path|command making it (run only when the artifact is missing).
ROWS=()
AWQ_CAL="--calib $CAL --samples $SAMPLES --seq-len 512"
ROWS+=("AWQ g64, RTN|$OUT/awq-rtn|$QUERN quantize $REF --format awq --group-size 64 -o $OUT/awq-rtn --no-provenance --quiet")
ROWS+=("AWQ g64, calibrated|$OUT/awq-cal|$QUERN quantize $REF --format awq --group-size 64 $AWQ_CAL -o $OUT/awq-cal --no-provenance --quiet --awq-report $OUT/awq-cal.search.json")
for T in $TYPES; do
    ROWS+=("$T, no imatrix|$OUT/$T.gguf|$QUERN quantize $REF --type $T -o $OUT/$T.gguf --no-provenance --quiet")
    if [ -n "$OUR_IMATRIX" ]; then
        ROWS+=("$T, our imatrix|$OUT/$T-ours.gguf|$QUERN quantize $REF --type $T --imatrix $OUR_IMATRIX -o $OUT/$T-ours.gguf --no-provenance --quiet")
    fi
    ROWS+=("$T, llama.cpp's imatrix|$OUT/$T-limat.gguf|$QUERN quantize $REF --type $T --imatrix $LIMAT -o $OUT/$T-limat.gguf --no-provenance --quiet")
    ROWS+=("$T, --awq + llama.cpp's imatrix|$OUT/$T-awq-limat.gguf|$QUERN quantize $REF --type $T --imatrix $LIMAT --awq $AWQ_CAL -o $OUT/$T-awq-limat.gguf --no-provenance --quiet --awq-report $OUT/$T-awq-limat.search.json")
done
ROWS+=("Q4_K_M by llama-quantize with its imatrix|$OUT/llama-Q4_K_M-limat.gguf|$LLAMA/llama-quantize --imatrix $LIMAT $F32 $OUT/llama-Q4_K_M-limat.gguf Q4_K_M")

for row in "${ROWS[@]}"; do
    IFS='|' read -r name path cmd <<<"$row"
    if [ ! -e "$path" ]; then
        log "making $name"
        # shellcheck disable=SC2086
        /usr/bin/time -f "%e s wall, %U s user, %S s sys" -o "$path.time" nice -n "$NICE" $cmd >"$path.log" 2>&1 \
            || { log "FAILED: $name (see $path.log)"; continue; }
    fi
    json=$path.verify-$CHUNKS.json
    if [ ! -s "$json" ]; then
        log "verifying $name ($CHUNKS chunks)"
        run "$QUERN" verify "$path" -r "$REF" --text "$W" --ctx 512 --chunks "$CHUNKS" --threads "$THREADS" \
            --reference-cache "$OUT/reference-logits" --json "$json" --quiet >"$json.log" 2>&1 || [ -s "$json" ] || { log "verify FAILED: $name"; continue; }
    fi
done

# The table.
# (the rows go through a file: the script itself is python's stdin)
printf '%s\n' "${ROWS[@]}" >"$OUT/rows.txt"
.venv/bin/python - "$CHUNKS" "$OUT/rows.txt" <<'PY'
import json, os, sys
chunks = sys.argv[1]
rtn_increase = None
print(f"| artifact | chunks | size | bits/weight | PPL (reference) | PPL increase | mean KLD | top-1 |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for line in open(sys.argv[2]).read().splitlines():
    name, path, _ = line.split("|", 2)
    j = f"{path}.verify-{chunks}.json"
    if not os.path.exists(j):
        print(f"| {name} | – | | | not measured | | | |")
        continue
    r = json.load(open(j))
    o, w = r["outputs"], r["weights"]
    size = r["artifact"]["bytes"] / 1e6
    ref, art = o["ppl_reference"]["value"], o["ppl_artifact"]["value"]
    inc = art - ref
    print(f"| {name} | {r['settings']['chunks']} | {size:.2f} MB | {w['bits_per_weight']:.3f} | "
          f"{art:.3f} ({ref:.3f}) | {inc:+.3f} | {o['kld']['mean']:.5f} ± {o['kld']['error']:.5f} | "
          f"{100 * o['top1_agreement']['value']:.2f} % |")
PY
