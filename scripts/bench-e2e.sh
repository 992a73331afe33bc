#!/usr/bin/env bash
# End to end: from the client's send to the forward arriving at a local sink,
# at a fixed rate, and the ingest ACK latency while the forward destination
# is down, against the healthy case in the same run.
#
#   sink          examples/forward_sink.rs                           127.0.0.1:18090
#   healthy       inlet, source `sms` forwarding to the sink         127.0.0.1:18083
#   down          inlet, source `sms` forwarding to a closed port    127.0.0.1:18084
#
# Rounds alternate healthy/down so drifts of a shared machine hit both.
# Knobs: DURATION=10 WARMUP=2 ROUNDS=3 RATE=1000 CONNECTIONS=64
# All traffic is on 127.0.0.1; everything started here is killed on exit.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-1000}
CONNECTIONS=${CONNECTIONS:-64}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/inlet-e2e.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "[bench-e2e.sh $(date +%H:%M:%S)] $*" >&2; }

cd "$ROOT"
log "building (release)"
cargo build --release --bin inlet --example forward_sink
BIN=$ROOT/target/release

"$BIN/examples/forward_sink" --listen 127.0.0.1:18090 >"$WORK/sink.log" 2>&1 &
PIDS+=("$!")

start_inlet() { # name port forward-url
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1/inlet.toml" <<TOML
[server]
listen = "127.0.0.1:$2"
[workers]
breaker_failures = 5
breaker_cooldown = "5s"
[[sources]]
name = "sms"
provider = "sms-gateway"
  [[sources.actions]]
  type = "forward"
  url = "$3"
  timeout = "2s"
TOML
  (cd "$WORK/$1" && RUST_LOG=warn exec "$BIN/inlet" serve --config inlet.toml) >"$WORK/$1.log" 2>&1 &
  PIDS+=("$!")
}
start_inlet healthy 18083 http://127.0.0.1:18090/inbound
start_inlet down 18084 http://127.0.0.1:18099/inbound

wait_up() { for _ in $(seq 100); do curl -fs "$1" >/dev/null && return 0; sleep 0.1; done; return 1; }
wait_up http://127.0.0.1:18090/stats
wait_up http://127.0.0.1:18083/health
wait_up http://127.0.0.1:18084/health

bench() { # port
  "$BIN/inlet" bench --rate "$RATE" --duration "$DURATION" --warmup "$WARMUP" \
    --connections "$CONNECTIONS" --url "http://127.0.0.1:$1/hooks/sms" --json --quiet
}

echo "| round | case | ACK p50 ms | ACK p99 ms | ACK p99.9 ms | forwarded | e2e p50 ms | e2e p99 ms |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  curl -fs -X POST http://127.0.0.1:18090/reset >/dev/null
  healthy=$(bench 18083)
  sent=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["ok"])' "$healthy")
  # Every acknowledged message (warm-up included) should reach the sink; wait, bounded.
  for _ in $(seq 300); do
    count=$(curl -fs http://127.0.0.1:18090/stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])')
    [[ $count -ge $sent ]] && break
    sleep 0.1
  done
  stats=$(curl -fs http://127.0.0.1:18090/stats)
  python3 - "$round" "$healthy" "$stats" <<'PY'
import json, sys
r, b, s = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
l = b["latency_ms"]
print(f"| {r} | healthy | {l['p50']:.3f} | {l['p99']:.3f} | {l['p999']:.3f} | {s['count']} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} |")
PY
  down=$(bench 18084)
  python3 - "$round" "$down" <<'PY'
import json, sys
r, b = sys.argv[1], json.loads(sys.argv[2])
l = b["latency_ms"]
print(f"| {r} | destination down | {l['p50']:.3f} | {l['p99']:.3f} | {l['p999']:.3f} | 0 | - | - |")
PY
done
curl -fs http://127.0.0.1:18084/health | python3 -c 'import json,sys; d=json.load(sys.stdin); print("down instance /health breakers:", d["breakers"], "queue:", d["queue"])' >&2
