#!/usr/bin/env bash
# What an idle gateway costs: for each binary in BINS, alternating ROUNDS
# times, `inlet serve` on a fresh data dir, one posted message, 3 s, then
# the process's clock ticks (utime+stime, /proc/PID/stat) over 10 s.
#   BINS="old=/tmp/inlet-old new=target/release/inlet" scripts/bench-idle.sh
# 100 ticks a second (USER_HZ) make 1 tick in 10 s 0.1 % of a core.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BINS=${BINS:-"inlet=$ROOT/target/release/inlet"}; PORT=${PORT:-18400}
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
for r in $(seq "${ROUNDS:-2}"); do
  for nb in $BINS; do
    n=${nb%%=*}; bin=$(realpath "${nb#*=}"); d=$(mktemp -d)
    (cd "$d" && RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:$PORT exec "$bin" serve > log 2>&1) & pid=$!
    sleep 3
    curl -s -o /dev/null -XPOST -H 'content-type: application/json' \
      -d '{"message":"hi","phoneNumber":"+15550001","receivedAt":"2026-12-07T10:00:00Z","guid":"idle-1"}' \
      "http://127.0.0.1:$PORT/hooks/sms"
    sleep 3
    a=$(ticks "$pid"); sleep 10; b=$(ticks "$pid")
    echo "round $r $n: $((b - a)) ticks in 10 s"
    kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$d"
  done
done
