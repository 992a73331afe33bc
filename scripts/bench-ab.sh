#!/usr/bin/env bash
# A/B of inlet binaries side by side with the group-commit ceiling, on
# fresh stores, interleaved: for each round and load, every target once.
#   BINS="new=target/release/inlet old=/path/to/older/inlet" scripts/bench-ab.sh
# Knobs: D=5 (seconds measured, +1 s warmup) ROUNDS=2 LOADS="max 1000 5000".
# PREFILL="NAME=SECONDS" first floods target NAME with --max for SECONDS (a
# big store against a fresh one: BINS="big=B fresh=B" PREFILL=big=100; 100 s
# made 3.8 million messages, 3.1 GB). Each line ends with the bytes the
# target's process wrote in the run, its warmup included (/proc/PID/io
# write_bytes), per message the run counted, and the share of the machine's
# CPU time the hypervisor stole during the run (`inlet bench`'s cpu_steal_pct);
# an inlet's line then says how long after the run its queue took to empty
# (polled every 0.5 s: the backlog a run left behind).
# All traffic is on 127.0.0.1; everything started here is stopped on exit.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH=$ROOT/target/release/inlet
GC=$ROOT/target/release/examples/group_commit_server
D=${D:-5}; ROUNDS=${ROUNDS:-2}; LOADS=${LOADS:-"max 1000 5000"}
BINS=${BINS:-"inlet=$BENCH"}
W=$(mktemp -d "${TMPDIR:-/tmp}/inlet-ab.XXXXXX")
declare -A PORT PID; PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait; rm -rf "$W"' EXIT
port=18100
for nb in $BINS; do
  n=${nb%%=*}; b=$(realpath "${nb#*=}"); mkdir -p "$W/$n"
  (cd "$W/$n" && RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:$port exec "$b" serve > log 2>&1) &
  PIDS+=($!); PID[$n]=$!; PORT[$n]=$port; port=$((port+1))
done
"$GC" --listen 127.0.0.1:18099 --file "$W/gc.log" > /dev/null 2>&1 & PIDS+=($!)
PID[group-commit]=$!; PORT[group-commit]=18099
sleep 1
. "$ROOT/scripts/settle.sh"
if [ -n "${PREFILL:-}" ]; then
  n=${PREFILL%%=*}
  settle "${PORT[$n]}" # up and answering
  "$BENCH" bench --url "http://127.0.0.1:${PORT[$n]}/hooks/sms" --max --connections 64 \
    --duration "${PREFILL#*=}" --warmup 0 --json --quiet > "$W/prefill.json"
  settle "${PORT[$n]}" 600
  echo "prefilled $n: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ok"])' "$W/prefill.json") messages, $(du -sh "$W/$n" | cut -f1)"
fi
written() { awk '/^write_bytes/ {print $2}' "/proc/${PID[$1]}/io"; }
for r in $(seq "$ROUNDS"); do
  for l in $LOADS; do
    if [ "$l" = max ]; then load=(--max); else load=(--rate "$l"); fi
    # Every inlet settles before each run, not only the one measured: the
    # one measured just before may still be storing its backlog, which
    # took the CPU from whichever target came next. The order rotates
    # each round.
    order=("${!PORT[@]}"); k=$(( (r - 1) % ${#order[@]} ))
    order=("${order[@]:k}" "${order[@]:0:k}")
    for t in "${order[@]}"; do
      for u in "${!PORT[@]}"; do [ "$u" != group-commit ] && settle "${PORT[$u]}"; done
      w0=$(written "$t")
      res=$("$BENCH" bench --url "http://127.0.0.1:${PORT[$t]}/hooks/sms" "${load[@]}" \
        --duration "$D" --warmup 1 --connections 64 --json --quiet)
      w=$(( $(written "$t") - w0 ))
      drained=
      if [ "$t" != group-commit ]; then
        d0=$(date +%s%N); settle "${PORT[$t]}" 600
        drained=" drained in $(awk -v n=$(($(date +%s%N) - d0)) 'BEGIN { printf "%.1f", n / 1e9 }') s"
      fi
      echo "round $r load $l $t $(echo "$res" | python3 -c 'import sys,json; d=json.load(sys.stdin); l=d["latency_ms"]; print("2xx/s %.0f p50 %.3f p99 %.3f p99.9 %.3f non2xx %s errors %s written %.0f B/msg stolen %s %%" % (d["ok_rps"], l["p50"], l["p99"], l["p999"], d["non_2xx"], d["errors"], int(sys.argv[1]) / max(d["ok"], 1), d.get("cpu_steal_pct")))' "$w")$drained"
    done
  done
done
