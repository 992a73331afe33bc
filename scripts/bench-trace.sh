#!/usr/bin/env bash
# Alternating trials at $RATE: fresh store, 4 s warm-up run, then a 10 s run
# under a per-call trace of fsync/fdatasync; prints p99 and the journal's
# slow syncs. NAMES are /tmp/inlet-$name binaries (copy them there);
# "gc" is the group-commit ceiling. Needs perf. Loopback only.
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=$ROOT/target/release/inlet; GC=$ROOT/target/release/examples/group_commit_server
RATE=${RATE:-5000}
for t in $(seq ${TRIALS:-3}); do
 for n in ${NAMES:-fdatasync t2 gc}; do
  d=${BASE:-/tmp/abt}/$n-$t; rm -rf $d; mkdir -p $d; cd $d
  if [ $n = gc ]; then ($GC --listen 127.0.0.1:18330 --file $d/gc.log > /dev/null 2>&1 &); sleep 1; PID=$(pgrep -f "group_commit_server --listen 127.0.0.1:18330"); th=group-commit/
  else (RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:18330 exec /tmp/inlet-$n serve > log 2>&1 &); sleep 1.5; PID=$(pgrep -f "inlet-$n serve"); th=inlet-journal/; fi
  $B bench --url http://127.0.0.1:18330/hooks/sms --rate $RATE --duration 4 --warmup 1 --connections 64 --quiet --json > warm.json
  # let the inlet's backlog drain
  for _ in $(seq 60); do [ $n = gc ] && break; p=$(curl -s 127.0.0.1:18330/health | python3 -c 'import sys,json; q=json.load(sys.stdin)["queue"]; print(q["pending"]+q["in_flight"])'); [ "$p" = 0 ] && break; sleep 0.5; done
  timeout -s INT 13 perf trace -p $PID -e fsync,fdatasync -o trace.txt & TP=$!
  sleep 0.5
  res=$($B bench --url http://127.0.0.1:18330/hooks/sms --rate $RATE --duration 10 --warmup 1 --connections 64 --quiet --json)
  wait $TP; kill $PID; sleep 1
  p=$(echo "$res" | python3 -c 'import sys,json; d=json.load(sys.stdin); l=d["latency_ms"]; print("p50 %.3f p99 %.3f p99.9 %.3f err %d" % (l["p50"], l["p99"], l["p999"], d["errors"]+d["non_2xx"]))')
  s=$(python3 - trace.txt $th <<'PY'
import re,sys
d=[];pend={}
for l in open(sys.argv[1]):
    if sys.argv[2] not in l: continue
    m=re.search(r'\(\s*([\d.]+) ms\)',l)
    if m: d.append(float(m.group(1)))
d.sort(); n=len(d)
print("syncs %d p99 %.3f p99.9 %.3f >1ms %d >2ms %d time>1ms %.1f ms"%(n,d[int(.99*n)],d[int(.999*n)],sum(x>1 for x in d),sum(x>2 for x in d),sum(x for x in d if x>1)))
PY
)
  echo "trial $t $n: $p | $s"
 done
done
