#!/bin/bash
# CPU and disk bytes per message of one inlet binary under one load:
#   scripts/bench-cpu.sh NAME BINARY PORT     (RATE=5000 DURATION=6)
#   LOAD=--max scripts/bench-cpu.sh NAME BINARY PORT   (closed loop instead)
# Starts BINARY on a fresh store (temp dir, 127.0.0.1:PORT), sends RATE/s
# (or $LOAD) for DURATION seconds with `inlet bench`, waits for the job
# queue to empty, and prints each thread group's utime+stime and
# write_bytes (bytes it caused to go to storage) per message, from
# /proc/<pid>/task/*/{stat,io}, and the totals. Loopback only; the server
# is stopped at the end.
set -u
name=$1; bin=$(realpath "$2"); port=$3
RATE=${RATE:-5000}; SECONDS_RUN=${DURATION:-6}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/settle.sh"
d=$(mktemp -d "${TMPDIR:-/tmp}/inlet-cpu.XXXXXX")
(cd "$d" && RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:$port exec "$bin" serve > log 2>&1) &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$d"' EXIT
sleep 2
snap() {
  for t in /proc/$pid/task/*; do
    c=$(tr ' ' _ < "$t/comm"); s=($(cut -d' ' -f14,15 "$t/stat"))
    echo "$c $((s[0]+s[1])) $(awk '/^write_bytes/ {print $2}' "$t/io")"
  done | awk '{a[$1]+=$2; b[$1]+=$3} END {for (k in a) print k, a[k], b[k]}' | sort
}
snap > "$d/before"
"$ROOT/target/release/inlet" bench --url "http://127.0.0.1:$port/hooks/sms" ${LOAD:---rate $RATE} \
  --duration "$SECONDS_RUN" --warmup 0 --connections 64 --quiet --json > "$d/r.json"
settle "$port"
snap > "$d/after"
n=$(python3 -c 'import json; print(json.load(open("'"$d/r.json"'"))["ok"])' 2>/dev/null || echo $((RATE*SECONDS_RUN)))
hz=$(getconf CLK_TCK)
join "$d/before" "$d/after" | awk -v n="$n" -v hz="$hz" -v name="$name" \
  '{d=$4-$2; w=$5-$3; tot+=d; wt+=w; printf "%s %-18s %6.1f us/msg %7.0f B/msg\n", name, $1, d*1e6/hz/n, w/n} END {printf "%s %-18s %6.1f us/msg %7.0f B/msg\n", name, "TOTAL", tot*1e6/hz/n, wt/n}'
echo "$name over $n messages"
python3 -c 'import json; d=json.load(open("'"$d/r.json"'")); print("'"$name"'", d["ok_rps"], "2xx/s", d["latency_ms"])'
