#!/usr/bin/env bash
# `make run`: a whole Kiln on this machine. Starts a private redis-server (unless
# KILN_REDIS__URL is set), the api, the stream gateway and two workers, all under var/;
# applies the example job, runs one build and follows its output live, then keeps
# everything running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VAR=$ROOT/var
BIN=${KILN_BIN_DIR:-$ROOT/target/debug}
API_PORT=${KILN_RUN_API_PORT:-8080}
GATEWAY_PORT=${KILN_RUN_GATEWAY_PORT:-8081}
REDIS_PORT=${KILN_RUN_REDIS_PORT:-16379}
mkdir -p "$VAR/storage" "$VAR/work" "$VAR/redis" "$VAR/logs"

pids=()
cleanup() {
  echo
  echo "stopping Kiln..."
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${KILN_REDIS__URL:-}" ]; then
  if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "installing redis-server (apt-get)..."
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    else
      echo "redis-server is missing. Install it (Debian/Ubuntu: sudo apt-get install redis-server;"
      echo "macOS: brew install redis) or point KILN_REDIS__URL at a Redis 7." >&2
      exit 1
    fi
  fi
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$VAR/redis" \
    --appendonly yes --save "" --maxmemory-policy noeviction \
    >"$VAR/logs/redis.log" 2>&1 &
  pids+=($!)
  export KILN_REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
fi

if [ ! -s "$VAR/token" ]; then
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$VAR/token"
fi
TOKEN=$(cat "$VAR/token")
export KILN_AUTH__TOKENS="local:admin:$TOKEN"
export KILN_STORAGE__ROOT="$VAR/storage"
export KILN_WORKER__WORKSPACE_ROOT="$VAR/work"
export KILN_URL="http://127.0.0.1:$API_PORT" KILN_TOKEN="$TOKEN"

start() { # name port binary [env...]
  local name=$1 port=$2 bin=$3; shift 3
  env KILN_HTTP__BIND="127.0.0.1:$port" "$@" "$BIN/$bin" >"$VAR/logs/$name.log" 2>&1 &
  pids+=($!)
}
wait_healthy() { # name port
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$2/healthz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$1 did not become healthy; see $VAR/logs/$1.log" >&2
  exit 1
}

start api "$API_PORT" kiln-api
if [ -x "$BIN/kiln-stream-gateway" ]; then
  start gateway "$GATEWAY_PORT" kiln-stream-gateway
  export KILN_GATEWAY_URL="ws://127.0.0.1:$GATEWAY_PORT"
fi
if [ -n "${KILN_ELASTICSEARCH__URL:-}" ]; then
  start indexer 8093 kiln-es-indexer
fi
start worker-1 8091 kiln-worker KILN_WORKER__ID=local-1
start worker-2 8092 kiln-worker KILN_WORKER__ID=local-2
wait_healthy api "$API_PORT"
wait_healthy worker-1 8091
wait_healthy worker-2 8092
[ -n "${KILN_GATEWAY_URL:-}" ] && wait_healthy gateway "$GATEWAY_PORT"

"$BIN/kiln" job apply -f examples/hello.toml
"$BIN/kiln" build start hello --follow || true

cat <<MSG

Kiln is running (logs in var/logs/):
  api        http://127.0.0.1:$API_PORT/api/v1   (OpenAPI: /api/v1/openapi.json)
  gateway    ${KILN_GATEWAY_URL:-not built}
  indexer    ${KILN_ELASTICSEARCH__URL:+http://127.0.0.1:8093/readyz -> $KILN_ELASTICSEARCH__URL}${KILN_ELASTICSEARCH__URL:-not started (set KILN_ELASTICSEARCH__URL)}
  workers    local-1, local-2 (health: http://127.0.0.1:8091/healthz, :8092)
  redis      $KILN_REDIS__URL
  token      $TOKEN   (also in var/token)

Try:  export KILN_URL=$KILN_URL KILN_TOKEN=\$(cat var/token)
      target/debug/kiln build start hello -p COUNT=10 --follow
Press Ctrl-C to stop everything.
MSG
wait
