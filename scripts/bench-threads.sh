#!/bin/bash
# CPU per request by thread, for one server under one load:
#   scripts/bench-threads.sh NAME PORT COMMAND...
#   e.g. scripts/bench-threads.sh inlet 18300 target/release/inlet serve
#        scripts/bench-threads.sh gc 18301 target/release/examples/group_commit_server --listen 127.0.0.1:18301
# Starts COMMAND in a fresh temp dir (INLET_SERVER__LISTEN=127.0.0.1:PORT is
# set for inlet), loads it 3 s (not counted), then 8 s counted with
# `inlet bench $LOAD` (default --max; e.g. LOAD="--rate 5000"), 64
# connections. Prints 2xx/s and latency, each thread group's utime+stime per
# request (/proc/PID/task/*/stat), the machine's CPU split over the run
# (/proc/stat) and the bench client's own CPU per request. Knobs:
# LOCKDB=1 holds SQLite's database locked from another connection for the
# counted run (inlet then only journals); IONICE=1 puts inlet's SQLite and
# journal helper threads at I/O priority idle. Inlet's /metrics at the end
# go to target/bench-results/threads-NAME-metrics.txt. Loopback only.
set -u
name=$1; port=$2; shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/target/release/inlet
LOAD=${LOAD:---max}
cmd=("$@"); cmd[0]=$(realpath "${cmd[0]}")
d=$(mktemp -d "${TMPDIR:-/tmp}/inlet-threads.XXXXXX")
(cd "$d" && RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:$port exec "${cmd[@]}" > log 2>&1) &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$d"' EXIT
sleep 2
if [ -n "${IONICE:-}" ]; then
  for t in /proc/$pid/task/*; do
    case $(cat "$t/comm") in inlet-sqlite*|inlet-journal-*) ionice -c3 -p "$(basename "$t")";; esac
  done
fi
snap() {
  for t in /proc/$pid/task/*; do
    c=$(cat "$t/comm"); s=($(cut -d' ' -f14,15 "$t/stat")); echo "$c $((s[0]+s[1]))"
  done | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort
}
url="http://127.0.0.1:$port/hooks/sms"
$BENCH bench --url "$url" $LOAD --duration 3 --warmup 0 --connections 64 --quiet --json > /dev/null
snap > "$d/before"
if [ -n "${LOCKDB:-}" ]; then
  python3 -c "import sqlite3,time; c=sqlite3.connect('$d/inlet-data/inlet.db', isolation_level=None, timeout=30); c.execute('BEGIN EXCLUSIVE'); time.sleep(9)" &
fi
st0=$(head -1 /proc/stat)
/usr/bin/time -f "%U %S" -o "$d/client" $BENCH bench --url "$url" $LOAD --duration 8 --warmup 0 \
  --connections 64 --quiet --json > "$d/r.json"
st1=$(head -1 /proc/stat)
snap > "$d/after"
mkdir -p "$ROOT/target/bench-results"
curl -s "127.0.0.1:$port/metrics" > "$ROOT/target/bench-results/threads-$name-metrics.txt" 2> /dev/null
n=$(python3 -c "import json; print(json.load(open('$d/r.json'))['ok'])")
hz=$(getconf CLK_TCK)
python3 -c "import json; d=json.load(open('$d/r.json')); print('$name', d['ok_rps'], '2xx/s', d['latency_ms'])"
join "$d/before" "$d/after" | awk -v n="$n" -v hz="$hz" -v name="$name" \
  '{d=$3-$2; tot+=d; if (d) printf "%s %-18s %6.2f us/req\n", name, $1, d*1e6/hz/n} END {printf "%s %-18s %6.2f us/req\n", name, "TOTAL", tot*1e6/hz/n}'
python3 - "$name" "$n" "$st0" "$st1" "$d/client" <<'PY'
import sys
name, n, a, b, client = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()[1:], sys.argv[4].split()[1:], sys.argv[5]
d = [int(y) - int(x) for x, y in zip(a, b)]; t = sum(d)
names = ['user', 'nice', 'sys', 'idle', 'iowait', 'irq', 'softirq', 'steal']
print(name, 'machine:', ' '.join(f'{k}={v * 100 / t:.1f}%' for k, v in zip(names, d)))
u, s = open(client).read().split()[:2]
print(name, 'client', round((float(u) + float(s)) * 1e6 / n, 2), 'us/req')
PY
