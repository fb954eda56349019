#!/usr/bin/env bash
# Loopback benchmark: 1 GB of random weights pushed and pulled with quern
# against quern's registry and Debian's docker-registry, beside curl's
# monolithic PUT / GET against docker-registry and `cp` of the same file.
# Prints a markdown table. Usage: testdata/registry/bench.sh [QUERN_BIN]
# Env: BENCH_DIR (default /tmp/quern-bench), BENCH_MB (default 1024).
set -euo pipefail

QUERN=${1:-${QUERN:-target/release/quern}}
DIR=${BENCH_DIR:-/tmp/quern-bench}
MB=${BENCH_MB:-1024}
REG=${DOCKER_REGISTRY:-/usr/bin/docker-registry}
for tool in "$QUERN" "$REG" curl sha256sum; do
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

echo "generating ${MB} MB of random weights..." >&2
mkdir -p "$DIR/model"
head -c "$((MB * 1024 * 1024))" /dev/urandom > "$DIR/model/weights.gguf"
SIZE=$(stat -c %s "$DIR/model/weights.gguf")
DIGEST="sha256:$(sha256sum "$DIR/model/weights.gguf" | cut -d' ' -f1)"
"$QUERN" keygen -o "$DIR/key.pem" >/dev/null
sync

declare -A T
t0=$(now); cp "$DIR/model/weights.gguf" "$DIR/copy.gguf"; t1=$(now); T[cp]=$(secs "$t0" "$t1")
rm -f "$DIR/copy.gguf"; sync
# The same copy made durable, as quern's registry makes every blob (fsync before rename).
t0=$(now); cp "$DIR/model/weights.gguf" "$DIR/copy.gguf"; sync; t1=$(now); T[cp-sync]=$(secs "$t0" "$t1")
rm -f "$DIR/copy.gguf"; sync

# quern's registry
QP=$(free_port)
"$QUERN" registry serve --root "$DIR/quern-root" --addr "127.0.0.1:$QP" >/dev/null & PIDS+=($!)
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
"$REG" serve "$DIR/docker.yml" >/dev/null 2>&1 & PIDS+=($!)
wait_up "127.0.0.1:$QP"; wait_up "127.0.0.1:$DP"

for target in quern:$QP docker:$DP; do
  name=${target%%:*}; port=${target#*:}
  sync
  t0=$(now)
  QUERN_CACHE_DIR="$DIR/cache-push-$name" "$QUERN" push -q "$DIR/model/weights.gguf" "127.0.0.1:$port/bench/model:v1" --key "$DIR/key.pem" >/dev/null
  t1=$(now); T[push-$name]=$(secs "$t0" "$t1")
  sync
  t0=$(now)
  QUERN_CACHE_DIR="$DIR/cache-pull-$name" "$QUERN" pull -q "127.0.0.1:$port/bench/model:v1" -o "$DIR/pulled-$name" --trust "$DIR/key.pem.pub" >/dev/null
  t1=$(now); T[pull-$name]=$(secs "$t0" "$t1")
  cmp "$DIR/model/weights.gguf" "$DIR/pulled-$name/weights.gguf"
  rm -rf "$DIR/cache-pull-$name" "$DIR/pulled-$name" "$DIR/cache-push-$name"
done

# curl against docker-registry: monolithic POST + PUT, then GET.
sync
t0=$(now)
LOC=$(curl -fsS -X POST -D - -o /dev/null "http://127.0.0.1:$DP/v2/bench/curl/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
case "$LOC" in http*) ;; *) LOC="http://127.0.0.1:$DP$LOC" ;; esac
curl -fsS -T "$DIR/model/weights.gguf" -H 'Content-Type: application/octet-stream' "$LOC&digest=$DIGEST" -o /dev/null
t1=$(now); T[curl-put]=$(secs "$t0" "$t1")
sync
t0=$(now); curl -fsS -o "$DIR/curl-get.bin" "http://127.0.0.1:$DP/v2/bench/curl/blobs/$DIGEST"; t1=$(now); T[curl-get]=$(secs "$t0" "$t1")
cmp "$DIR/model/weights.gguf" "$DIR/curl-get.bin"

gbps() { python3 -c "print(f'{$SIZE/1e9/$1:.2f}')"; }
echo
echo "Loopback, $((SIZE / 1000000)) MB random weights, one run ($(nproc) cores)."
echo
echo "| operation | seconds | GB/s |"
echo "| --- | ---: | ---: |"
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
  echo "| $label | ${T[$k]} | $(gbps "${T[$k]}") |"
done
