#!/bin/bash
# Inlet on a big store against inlet on a fresh one and the group-commit
# ceiling, interleaved (order rotating), 10 s runs at each of LOADS:
#   PREFILL=100 scripts/bench-store-size.sh   (PREFILL: seconds of --max
#   into the big one first; 100 s made 3.8 million messages, 3.1 GB)
# Prints p50/p99/p99.9 and bytes written per message. Loopback only.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd); B=$ROOT/target/release/inlet; GC=$ROOT/target/release/examples/group_commit_server
. $ROOT/scripts/settle.sh
W=${BASE:-/tmp/inlet-store-size}; rm -rf "$W"; mkdir -p $W/big $W/fresh
(cd $W/big && RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:18200 exec $B serve > log 2>&1) & BIG=$!
trap 'kill $BIG ${FRESH:-} ${G:-} 2>/dev/null; wait; rm -rf "$W"' EXIT
sleep 2
if [ "${PREFILL:-0}" != 0 ]; then
  $B bench --url http://127.0.0.1:18200/hooks/sms --max --connections 64 --duration $PREFILL --warmup 0 --quiet --json > $W/prefill.json
  echo "prefill: $(jq .ok $W/prefill.json) msgs"; t0=$SECONDS; settle 18200 600; echo "settled in $((SECONDS-t0)) s"
fi
rm -rf $W/fresh; mkdir -p $W/fresh
(cd $W/fresh && RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:18201 exec $B serve > log 2>&1) & FRESH=$!
$GC --listen 127.0.0.1:18202 --file $W/gc.log > /dev/null 2>&1 & G=$!
sleep 2; du -sh $W/big/inlet-data
declare -A P=([big]=18200 [fresh]=18201 [gc]=18202); declare -A PID=([big]=$BIG [fresh]=$FRESH [gc]=$G)
T=(big fresh gc)
for r in $(seq ${ROUNDS:-3}); do for l in ${LOADS:-1000 5000}; do for k in 0 1 2; do
  t=${T[$(((k + r - 1) % 3))]}
  settle 18200 120; settle 18201 120
  w0=$(awk '/^write_bytes/ {print $2}' /proc/${PID[$t]}/io)
  j=$($B bench --url http://127.0.0.1:${P[$t]}/hooks/sms --rate $l --connections 64 --duration 10 --warmup 2 --quiet --json)
  w1=$(awk '/^write_bytes/ {print $2}' /proc/${PID[$t]}/io)
  n=$(echo "$j" | jq .ok)
  echo "$r $l $t $(echo "$j" | jq -r '"p50 \(.latency_ms.p50) p99 \(.latency_ms.p99) p999 \(.latency_ms.p999)"') wbytes/msg $(( (w1-w0)/n ))"
done; done; done
du -sh $W/big/inlet-data $W/fresh/inlet-data
