#!/usr/bin/env bash
# Where the ACK tail goes: alternating trials, each on a fresh store, of
# every binary in BINS and the group-commit ceiling. A trial is a 4 s run at
# $RATE, a wait for the queue to drain, then a 10 s run under a per-call
# `perf trace` of fsync/fdatasync; it prints the run's latency and the
# journal thread's syncs (the ceiling's writer for the ceiling), and how
# many of its syncs over 1 ms overlapped no other thread's sync.
#   BINS="t1=/tmp/inlet-t1 t10=/tmp/inlet-t10" TRIALS=3 scripts/bench-trace.sh
# Knobs: RATE=5000 TRIALS=3 BASE=/tmp/inlet-trace (store dirs; put it on
# another filesystem to test that one). Needs perf. Loopback only.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/target/release/inlet; GC=$ROOT/target/release/examples/group_commit_server
RATE=${RATE:-5000}; BINS=${BINS:-"inlet=$B"}; PORT=18330
. "$ROOT/scripts/settle.sh"
for t in $(seq "${TRIALS:-3}"); do
  for nb in $BINS gc=; do
    n=${nb%%=*}; bin=${nb#*=}
    d=${BASE:-/tmp/inlet-trace}/$n-$t; rm -rf "$d"; mkdir -p "$d"; cd "$d" || exit 1
    if [ "$n" = gc ]; then
      "$GC" --listen 127.0.0.1:$PORT --file "$d/gc.log" > /dev/null 2>&1 & PID=$!; th=group-commit/
    else
      RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:$PORT "$bin" serve > log 2>&1 & PID=$!; th=inlet-journal/
    fi
    sleep 1.5
    "$B" bench --url "http://127.0.0.1:$PORT/hooks/sms" --rate "$RATE" --duration 4 --warmup 1 \
      --connections 64 --quiet --json > warm.json
    [ "$n" = gc ] || settle $PORT
    timeout -s INT 13 perf trace -p $PID -e fsync,fdatasync -o trace.txt & TP=$!
    sleep 0.5
    res=$("$B" bench --url "http://127.0.0.1:$PORT/hooks/sms" --rate "$RATE" --duration 10 --warmup 1 \
      --connections 64 --quiet --json)
    wait $TP; kill $PID; wait $PID 2>/dev/null
    p=$(echo "$res" | python3 -c 'import sys,json; d=json.load(sys.stdin); l=d["latency_ms"]; print("p50 %.3f p99 %.3f p99.9 %.3f err %d" % (l["p50"], l["p99"], l["p999"], d["errors"]+d["non_2xx"]))')
    s=$(python3 - trace.txt "$th" <<'PY'
import re, sys
# One event per call: (start ms, duration ms, thread). perf prints a call
# that another CPU interrupted as an opening line and a "[continued]" one.
ev, opened = [], {}
for l in open(sys.argv[1]):
    m = re.match(r'\s*([\d.]+) \(\s*([\d.]*)\s*(?:ms)?\): (\S+)/(\d+) +(\.\.\. \[continued\])?', l)
    if not m: continue
    t, d, th, tid, cont = m.groups()
    if cont and tid in opened: ev.append((opened.pop(tid), float(d), th))
    elif d: ev.append((float(t), float(d), th))
    else: opened[tid] = float(t)
mine = sorted(e[1] for e in ev if e[2].startswith(sys.argv[2].rstrip('/')))
n = len(mine)
slow = [e for e in ev if e[2].startswith(sys.argv[2].rstrip('/')) and e[1] > 1]
others = [e for e in ev if not e[2].startswith(sys.argv[2].rstrip('/'))]
alone = sum(not any(o[0] < s[0] + s[1] and o[0] + o[1] > s[0] for o in others) for s in slow)
print("syncs %d p99 %.3f p99.9 %.3f >1ms %d (%d overlapping no other thread's sync) >2ms %d time>1ms %.1f ms" % (
    n, mine[int(.99 * n)], mine[int(.999 * n)], len(slow), alone, sum(x > 2 for x in mine),
    sum(x for x in mine if x > 1)))
PY
)
    echo "trial $t $n: $p | $s"
  done
done
