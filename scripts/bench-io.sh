#!/bin/bash
# Bytes written to storage per message, by thread, for one inlet binary:
#   scripts/bench-io.sh BINARY [PORT]        (LOAD="--max" by default)
# Starts BINARY on a fresh store (temp dir, 127.0.0.1:PORT), loads it 10 s
# with `inlet bench $LOAD` (64 connections), waits until its job queue is
# empty, and prints each thread group's `write_bytes` (/proc/PID/task/*/io:
# bytes this thread caused to go to storage) over the messages stored.
# Loopback only.
set -u
bin=$(realpath "$1"); port=${2:-18098}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
d=$(mktemp -d "${TMPDIR:-/tmp}/inlet-io.XXXXXX")
(cd "$d" && RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:$port exec "$bin" serve > log 2>&1) &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$d"' EXIT
sleep 2
snap() {
  for t in /proc/$pid/task/*; do
    echo "$(tr ' ' _ < "$t/comm") $(awk '/^write_bytes/{print $2}' "$t/io")"
  done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort
}
snap > "$d/before"
"$ROOT/target/release/inlet" bench --url "http://127.0.0.1:$port/hooks/sms" ${LOAD:---max} \
  --duration 10 --warmup 0 --connections 64 --quiet --json > "$d/r.json"
for _ in $(seq 120); do
  q=$(curl -s "127.0.0.1:$port/health" | python3 -c \
    "import json,sys; q=json.load(sys.stdin)['queue']; print(q['pending']+q['in_flight'])")
  [ "$q" = 0 ] && break; sleep 1
done
sleep 2
snap > "$d/after"
n=$(python3 -c "import json; print(json.load(open('$d/r.json'))['ok'])")
echo "$(basename "$bin"): $n messages, $(python3 -c "import json; print(json.load(open('$d/r.json'))['ok_rps'])") 2xx/s"
join "$d/before" "$d/after" | awk -v n="$n" \
  '{d=$3-$2; t+=d; if (d) printf "  %-20s %7.0f bytes/message\n", $1, d/n} END {printf "  %-20s %7.0f bytes/message\n", "TOTAL", t/n}'
