#!/usr/bin/env bash
# Loopback benchmark: 1 GB of random weights pushed and pulled with quern
# against quern's registry and Debian's docker-registry, beside curl's
# monolithic PUT / GET against docker-registry and `cp` of the same file.
# Prints a markdown table (wall seconds, GB/s, on-CPU seconds of the client and
# of the registry process) and the ratios the targets name: push against the
# durable copy, pull against curl's GET. Wall times mean something only on an
# idle machine; the load is printed before and after.
# Usage: testdata/registry/bench.sh [QUERN_BIN]
# Env: BENCH_DIR (default /tmp/quern-bench), BENCH_MB (default 1024).
set -euo pipefail

QUERN=${1:-${QUERN:-target/release/quern}}
DIR=${BENCH_DIR:-/tmp/quern-bench}
MB=${BENCH_MB:-1024}
REG=${DOCKER_REGISTRY:-/usr/bin/docker-registry}
for tool in "$QUERN" "$REG" curl sha256sum /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing: $tool" >&2; exit 1; }
done

rm -rf "$DIR"; mkdir -p "$DIR"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 1 200); do curl -fs "http://$1/v2/" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "registry $1 did not start" >&2; exit 1; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2-$1:.2f}')"; }
TCK=$(getconf CLK_TCK)
# On-CPU seconds (user + system) a process has used so far.
cpu_of() { awk -v t="$TCK" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }

declare -A T C S
# timed KEY SERVER_PID|- CMD...: wall time, the command's CPU time, the server's CPU time.
timed() {
  local key=$1 server=$2; shift 2
  local s0=0 s1=0
  [ "$server" != - ] && s0=$(cpu_of "$server")
  local t0 t1; t0=$(now)
  /usr/bin/time -f "%U %S" -o "$DIR/time.txt" "$@"
  t1=$(now)
  [ "$server" != - ] && s1=$(cpu_of "$server")
  T[$key]=$(secs "$t0" "$t1")
  C[$key]=$(awk '{printf "%.2f", $1 + $2}' "$DIR/time.txt")
  if [ "$server" != - ]; then S[$key]=$(python3 -c "print(f'{$s1-$s0:.2f}')"); else S[$key]="-"; fi
}
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

echo "generating ${MB} MB of random weights..." >&2
mkdir -p "$DIR/model"
head -c "$((MB * 1024 * 1024))" /dev/urandom > "$DIR/model/weights.gguf"
SIZE=$(stat -c %s "$DIR/model/weights.gguf")
DIGEST="sha256:$(sha256sum "$DIR/model/weights.gguf" | cut -d' ' -f1)"
"$QUERN" keygen -o "$DIR/key.pem" >/dev/null
sync

timed cp - cp "$DIR/model/weights.gguf" "$DIR/copy.gguf"
rm -f "$DIR/copy.gguf"; sync
# The same copy made durable, as quern's registry makes every blob (fsync before rename).
timed cp-sync - sh -c 'cp "$1" "$2" && sync' sh "$DIR/model/weights.gguf" "$DIR/copy.gguf"
rm -f "$DIR/copy.gguf"; sync

# quern's registry
QP=$(free_port)
"$QUERN" registry serve --root "$DIR/quern-root" --addr "127.0.0.1:$QP" >/dev/null & PIDS+=($!); QPID=$!
# docker-registry
DP=$(free_port)
cat > "$DIR/docker.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DIR/docker-root
http:
  addr: 127.0.0.1:$DP
YML
"$REG" serve "$DIR/docker.yml" >/dev/null 2>&1 & PIDS+=($!); DPID=$!
wait_up "127.0.0.1:$QP"; wait_up "127.0.0.1:$DP"

for target in quern:$QP:$QPID docker:$DP:$DPID; do
  IFS=: read -r name port pid <<<"$target"
  sync
  QUERN_CACHE_DIR="$DIR/cache-push-$name" timed "push-$name" "$pid" \
    "$QUERN" push -q "$DIR/model/weights.gguf" "127.0.0.1:$port/bench/model:v1" --key "$DIR/key.pem" >/dev/null
  sync
  QUERN_CACHE_DIR="$DIR/cache-pull-$name" timed "pull-$name" "$pid" \
    "$QUERN" pull -q "127.0.0.1:$port/bench/model:v1" -o "$DIR/pulled-$name" --trust "$DIR/key.pem.pub" >/dev/null
  cmp "$DIR/model/weights.gguf" "$DIR/pulled-$name/weights.gguf"
  rm -rf "$DIR/cache-pull-$name" "$DIR/pulled-$name" "$DIR/cache-push-$name"
done

# curl against docker-registry: monolithic POST + PUT, then GET.
sync
LOC=$(curl -fsS -X POST -D - -o /dev/null "http://127.0.0.1:$DP/v2/bench/curl/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
case "$LOC" in http*) ;; *) LOC="http://127.0.0.1:$DP$LOC" ;; esac
timed curl-put "$DPID" curl -fsS -T "$DIR/model/weights.gguf" -H 'Content-Type: application/octet-stream' "$LOC&digest=$DIGEST" -o /dev/null
sync
timed curl-get "$DPID" curl -fsS -o "$DIR/curl-get.bin" "http://127.0.0.1:$DP/v2/bench/curl/blobs/$DIGEST"
cmp "$DIR/model/weights.gguf" "$DIR/curl-get.bin"

gbps() { python3 -c "print(f'{$SIZE/1e9/$1:.2f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
echo
echo "Loopback, $((SIZE / 1000000)) MB random weights, one run; $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)); load average before: $LOAD_BEFORE, after: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| operation | seconds | GB/s | client CPU s | registry CPU s |"
echo "| --- | ---: | ---: | ---: | ---: |"
for k in cp cp-sync push-quern pull-quern push-docker pull-docker curl-put curl-get; do
  case $k in
    cp) label="cp (same disk, page cache)";;
    cp-sync) label="cp + sync (same disk, durable)";;
    push-quern) label="quern push -> quern registry (signed)";;
    pull-quern) label="quern pull <- quern registry (verified)";;
    push-docker) label="quern push -> docker-registry (signed)";;
    pull-docker) label="quern pull <- docker-registry (verified)";;
    curl-put) label="curl POST+PUT -> docker-registry";;
    curl-get) label="curl GET <- docker-registry";;
  esac
  echo "| $label | ${T[$k]} | $(gbps "${T[$k]}") | ${C[$k]} | ${S[$k]} |"
done
echo
echo "Targets (speed ratios; >= means met):"
echo "- push -> quern registry vs durable cp: $(ratio "${T[cp-sync]}" "${T[push-quern]}")x (target >= 0.8)"
echo "- push -> docker-registry vs durable cp: $(ratio "${T[cp-sync]}" "${T[push-docker]}")x"
echo "- pull <- docker-registry vs curl GET: $(ratio "${T[curl-get]}" "${T[pull-docker]}")x (target >= 1.0)"
echo "- pull <- quern registry vs curl GET from docker-registry: $(ratio "${T[curl-get]}" "${T[pull-quern]}")x (target >= 1.0)"
