#!/usr/bin/env bash
# Tokens per CPU second of `quern bench` and `llama-bench` on the same files, for a
# machine shared with other work (where wall-clock figures mean little): each run
# under `perf stat -e task-clock`, whole process (loading included), the tokens it
# computed divided by its CPU seconds. Tokens counted include each tool's warm-up:
# quern warms up with one full repetition of each test; llama-bench with one full
# prompt run and a single generated token. Prefill and decode run
# separately (-p PP -n 0, then -p 0 -n TG), THREADS threads (default 1: no spinning
# workers, so CPU time is the work). Also prints each tool's own tokens/s and the
# load average before each run. ENV: extra environment for quern (e.g.
# QUERN_CPU_ISA=avx2).
#
#   bench/cpu-time.sh FILE...
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUERN="${QUERN_BIN:-$REPO/target/release/quern}"
LB="${LLAMA_BENCH:-$REPO/.cache/llama.cpp/build/bin/llama-bench}"
THREADS="${THREADS:-1}"
REPS="${REPS:-3}"
PP="${PP:-128}"
TG="${TG:-64}"
ENV="${ENV:-}"
cpu_s() { # cpu_s CMD... -> prints "cpu_seconds<TAB>tool output"
    local out
    out="$(perf stat -e task-clock -x, -o /tmp/cpu-time.$$ "$@" 2>&1)"
    awk -F, '/task-clock/ {printf "%.3f\n", $1 / 1000}' /tmp/cpu-time.$$
    rm -f /tmp/cpu-time.$$
    echo "$out" >&2
}
printf '| file | test | quern t/CPU-s | llama-bench t/CPU-s | ratio | quern t/s | llama-bench t/s | load before |\n'
printf '|---|---|---:|---:|---:|---:|---:|---|\n'
for f in "$@"; do
    for mode in pp tg; do
        if [ $mode = pp ]; then p=$PP; n=0; tq=$((PP * (REPS + 1))); tl=$((PP * (REPS + 1)));
        else p=0; n=$TG; tq=$((TG * (REPS + 1))); tl=$((TG * REPS + 1)); fi
        l1="$(cut -d' ' -f1 /proc/loadavg)"

        qcpu="$(cpu_s env $ENV "$QUERN" bench "$f" --threads "$THREADS" -p $p -n $n -r "$REPS" --no-floor 2>/tmp/q.out.$$)"
        qtps="$(grep -E "^ +(pp|tg)[0-9]+" /tmp/q.out.$$ | awk '{print $2}' | head -1)"
        l2="$(cut -d' ' -f1 /proc/loadavg)"
        lcpu="$(cpu_s "$LB" -m "$f" -t "$THREADS" -p $p -n $n -r "$REPS" 2>/tmp/l.out.$$)"
        ltps="$(grep -E "\| +(pp|tg)[0-9]+ +\|" /tmp/l.out.$$ | awk -F'|' '{print $(NF-1)}' | awk '{print $1}' | head -1)"
        awk -v f="$(basename "$f")" -v m="$mode$([ $mode = pp ] && echo $PP || echo $TG)" -v tq="$tq" -v tl="$tl" -v q="$qcpu" -v l="$lcpu" \
            -v qt="$qtps" -v lt="$ltps" -v l1="$l1" -v l2="$l2" \
            'BEGIN {printf "| %s | %s | %.1f | %.1f | %.2f | %s | %s | %s / %s |\n", f, m, tq/q, tl/l, (tq/q)/(tl/l), qt, lt, l1, l2}'
    done
done
rm -f /tmp/q.out.$$ /tmp/l.out.$$
