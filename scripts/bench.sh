#!/usr/bin/env bash
# Inlet against two baselines on this machine, side by side:
#   inlet         `inlet serve` (SQLite, defaults, source `sms`)   127.0.0.1:18080
#   bare          examples/bare_server.rs: the HTTP ceiling          127.0.0.1:18081
#   group-commit  examples/group_commit_server.rs: append+fdatasync  127.0.0.1:18082
#                 per batch, the durable-ACK ceiling of this disk
#
# For each round, for each load (max throughput, then each --rate), the three
# targets are benched one after another (round-robin, the order rotating each
# round), so slow drifts of a shared machine hit all three alike. Before each
# run the script waits (bounded) until inlet's job queue is empty, so no run
# pays for the background processing of an earlier one.
#
# Knobs (environment): DURATION=10 WARMUP=2 ROUNDS=3 RATES="1000 5000"
#   MAX_CONNECTIONS=64 RATE_CONNECTIONS=64 SETTLE_TIMEOUT=120
#   OUT_DIR=target/bench-results  KEEP_TMP=0
#
# All traffic is on 127.0.0.1. Everything started here is killed on exit.
set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
RATES=${RATES:-"1000 5000"}
MAX_CONNECTIONS=${MAX_CONNECTIONS:-64}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-64}
SETTLE_TIMEOUT=${SETTLE_TIMEOUT:-120}
KEEP_TMP=${KEEP_TMP:-0}
RSS_RATE=5000 # the rate at which inlet's peak RSS is measured

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=${OUT_DIR:-$ROOT/target/bench-results}
STAMP=$(date +%Y%m%d-%H%M%S)
RESULTS=$OUT_DIR/results-$STAMP.jsonl
REPORT=$OUT_DIR/report-$STAMP.md

declare -A PORT=([inlet]=18080 [bare]=18081 [group-commit]=18082)
declare -A URL=(
  [inlet]=http://127.0.0.1:18080/hooks/sms
  [bare]=http://127.0.0.1:18081/hooks/sms
  [group-commit]=http://127.0.0.1:18082/hooks/sms
)
TARGETS=(inlet bare group-commit)

log() { echo "[bench.sh $(date +%H:%M:%S)] $*" >&2; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/inlet-bench.XXXXXX")
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ $KEEP_TMP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cd "$ROOT"
log "building (release)"
cargo build --release --bin inlet --examples
BIN=$ROOT/target/release
mkdir -p "$OUT_DIR" "$WORK/inlet"

# inlet: fresh working dir, so ./inlet-data is new; defaults otherwise.
(cd "$WORK/inlet" && INLET_SERVER__LISTEN=127.0.0.1:${PORT[inlet]} RUST_LOG=warn \
  exec "$BIN/inlet" serve) >"$WORK/inlet.log" 2>&1 &
INLET_PID=$!
PIDS+=("$INLET_PID")
"$BIN/examples/bare_server" --listen 127.0.0.1:${PORT[bare]} >"$WORK/bare.log" 2>&1 &
PIDS+=("$!")
"$BIN/examples/group_commit_server" --listen 127.0.0.1:${PORT[group-commit]} \
  --file "$WORK/group-commit.log" >"$WORK/group-commit.log.out" 2>&1 &
PIDS+=("$!")

wait_up() { # bounded: 30 s
  local name=$1
  for _ in $(seq 300); do
    if curl -s -o /dev/null --max-time 1 -X POST -H 'content-type: application/json' \
      -d '{"date":"2026-01-01","hour":"00:00","time_received":"x","message":"ping","number":"+15550000000","guid":"bench-ping-'"$name"'"}' \
      "${URL[$name]}"; then
      return 0
    fi
    sleep 0.1
  done
  log "$name did not come up; its log:"
  cat "$WORK"/"$name"*.log* >&2 || true
  return 1
}
for t in "${TARGETS[@]}"; do wait_up "$t"; done
log "all three targets are up; inlet pid $INLET_PID, work dir $WORK"

. "$ROOT/scripts/settle.sh"
# Wait (bounded) until inlet has no pending or running jobs.
settle_inlet() {
  local t0=$SECONDS
  if settle "${PORT[inlet]}" "$SETTLE_TIMEOUT"; then
    ((SECONDS - t0 > 1)) && log "waited $((SECONDS - t0))s for inlet's job queue to drain"
  else
    log "inlet's job queue was not empty after ${SETTLE_TIMEOUT}s; going on"
  fi
  return 0
}

# The highest VmHWM read so far: the per-run resets would otherwise make
# the final reading the peak since the last reset, not the script's.
PEAK_HWM=0
note_hwm() {
  local kb
  kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$INLET_PID/status")
  ((kb > PEAK_HWM)) && PEAK_HWM=$kb
  return 0
}

# One bench run; appends its JSON summary, tagged, to $RESULTS.
bench() {
  local round=$1 load=$2 target=$3 mode_args rss_kb=null
  if [[ $load == max ]]; then
    mode_args=(--max --connections "$MAX_CONNECTIONS")
  else
    mode_args=(--rate "$load" --connections "$RATE_CONNECTIONS")
  fi
  settle_inlet
  local measure_rss=0
  if [[ $target == inlet && $load == "$RSS_RATE" ]]; then
    # Reset VmHWM so it is the peak of this run alone (Linux clear_refs 5),
    # keeping the peak so far for the whole-script figure.
    note_hwm
    if echo 5 >"/proc/$INLET_PID/clear_refs" 2>/dev/null; then measure_rss=1; else measure_rss=2; fi
  fi
  log "round $round  load $load  target $target"
  local line
  line=$(timeout $((DURATION + WARMUP + 60)) "$BIN/inlet" bench --url "${URL[$target]}" \
    "${mode_args[@]}" --duration "$DURATION" --warmup "$WARMUP" --json --quiet) || {
    log "bench failed (round $round, $load, $target)"
    return 0
  }
  if ((measure_rss > 0)); then
    rss_kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$INLET_PID/status")
  fi
  echo "$line" | jq -c --arg t "$target" --arg l "$load" --argjson r "$round" \
    --argjson rss "$rss_kb" --argjson lifetime "$((measure_rss == 2))" \
    '. + {target: $t, load: $l, round: $r, inlet_vmhwm_kb: $rss, vmhwm_is_lifetime: ($lifetime == 1)}' \
    >>"$RESULTS"
  echo "$line" | jq -r '"    \(.ok_rps) 2xx/s  p50 \(.latency_ms.p50)  p99 \(.latency_ms.p99)  p99.9 \(.latency_ms.p999) ms  non2xx \(.non_2xx) errors \(.errors) unfinished \(.unfinished)"' >&2
}

for ((round = 1; round <= ROUNDS; round++)); do
  for load in max $RATES; do
    for ((k = 0; k < ${#TARGETS[@]}; k++)); do
      bench "$round" "$load" "${TARGETS[$(((k + round - 1) % ${#TARGETS[@]}))]}"
    done
  done
done
# inlet's own view (ACK and stage histograms), for reading where time goes.
curl -s --max-time 5 http://127.0.0.1:${PORT[inlet]}/metrics >"$OUT_DIR/inlet-metrics-$STAMP.txt" || true
note_hwm
STORE_BYTES=$(du -sb "$WORK/inlet/inlet-data" | cut -f1)

python3 - "$RESULTS" "$PEAK_HWM" "$STORE_BYTES" "$RATES" >"$REPORT" <<'EOF'
import json, statistics, sys
path, lifetime_hwm, store_bytes, rates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
runs = [json.loads(l) for l in open(path)]
loads = ["max"] + rates
targets = ["inlet", "bare", "group-commit"]

def sel(t, l):
    return [r for r in runs if r["target"] == t and r["load"] == l]

def med(t, l, f):
    xs = [f(r) for r in sel(t, l)]
    return statistics.median(xs) if xs else None

def rng(t, l, f):
    xs = [f(r) for r in sel(t, l)]
    return f"{min(xs):g}–{max(xs):g}" if xs else "n/a"

def fmt(x, d=3):
    return "n/a" if x is None else f"{x:.{d}f}"

# The hypervisor's share of the machine's CPU time during each run
# (`inlet bench`'s cpu_steal_pct): median [range] over the rounds.
def steal(t, l):
    xs = [r["cpu_steal_pct"] for r in sel(t, l) if r.get("cpu_steal_pct") is not None]
    return f"{statistics.median(xs):.1f} [{min(xs):g}–{max(xs):g}]" if xs else "n/a"

def steal_of(r):
    x = r.get("cpu_steal_pct")
    return "?" if x is None else f"{x:g}"

n_rounds = max((r["round"] for r in runs), default=0)
print(f"Medians of {n_rounds} round(s); the range over rounds is in brackets.\n")
for l in loads:
    title = "Max throughput (closed loop, latency from send)" if l == "max" \
        else f"Open loop at {l} req/s (latency from intended send time)"
    print(f"### {title}\n")
    print("| target | 2xx/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | errors | unfinished | CPU stolen % |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in targets:
        if not sel(t, l):
            continue
        L = lambda k: (lambda r: r["latency_ms"][k])
        s = lambda k: sum(r[k] for r in sel(t, l))
        print(f"| {t} | {med(t,l,lambda r:r['ok_rps']):.0f} [{rng(t,l,lambda r:r['ok_rps'])}] "
              f"| {fmt(med(t,l,L('p50')))} | {fmt(med(t,l,L('p90')))} "
              f"| {fmt(med(t,l,L('p99')))} [{rng(t,l,L('p99'))}] | {fmt(med(t,l,L('p999')))} "
              f"| {fmt(med(t,l,L('max')))} | {s('non_2xx')} | {s('errors')} | {s('unfinished')} "
              f"| {steal(t, l)} |")
    print()

def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b

print("### Targets\n")
print("| target | inlet | ceiling | ratio | goal | met? |")
print("|---|---|---|---|---|---|")
okr = lambda r: r["ok_rps"]
ti, tg = med("inlet", "max", okr), med("group-commit", "max", okr)
tr = ratio(ti, tg)
print(f"| max sustained ingest, 2xx/s | {fmt(ti,0)} | {fmt(tg,0)} (group-commit) | {fmt(tr,2)}x | >= 0.8x | {'yes' if tr is not None and tr >= 0.8 else 'NO'} |")
tb = med("bare", "max", okr)
print(f"| (for reference) vs HTTP ceiling | {fmt(ti,0)} | {fmt(tb,0)} (bare) | {fmt(ratio(ti,tb),2)}x | — | — |")
for l in rates:
    p50 = med("inlet", l, lambda r: r["latency_ms"]["p50"])
    print(f"| p50 at {l}/s, ms | {fmt(p50)} | {fmt(med('group-commit', l, lambda r: r['latency_ms']['p50']))} (group-commit) | — | <= 0.5 ms | {'yes' if p50 is not None and p50 <= 0.5 else 'NO'} |")
    pi = med("inlet", l, lambda r: r["latency_ms"]["p99"])
    pg = med("group-commit", l, lambda r: r["latency_ms"]["p99"])
    pr = ratio(pi, pg)
    print(f"| p99 at {l}/s, ms | {fmt(pi)} | {fmt(pg)} (group-commit) | {fmt(pr,2)}x | <= 1.25x | {'yes' if pr is not None and pr <= 1.25 else 'NO'} |")
    # The same ratio round by round (each against the ceiling run next to
    # it): how much of the verdict is one round's noise.
    # With each run's stolen CPU %, inlet's / the ceiling's.
    byr = {r["round"]: r for r in sel("group-commit", l)}
    pairs = [(r, byr[r["round"]]) for r in sel("inlet", l)
             if r["round"] in byr and byr[r["round"]]["latency_ms"]["p99"]]
    rr = [i["latency_ms"]["p99"] / g["latency_ms"]["p99"] for i, g in pairs]
    if rr:
        shown = ', '.join(f'{x:.2f}x (stolen {steal_of(i)}/{steal_of(g)} %)' for x, (i, g) in zip(rr, pairs))
        print(f"| (for reference) p99 at {l}/s by round, inlet / same round's ceiling | {shown} | — | median {statistics.median(rr):.2f}x | — | — |")
    ach = med("inlet", l, okr)
    print(f"| achieved at {l}/s, 2xx/s | {fmt(ach,0)} | {fmt(med('group-commit', l, okr),0)} (group-commit) | — | = {l} | {'yes' if ach is not None and ach >= 0.99*float(l) else 'NO'} |")
rss = [r["inlet_vmhwm_kb"] for r in runs if r["target"] == "inlet" and r.get("inlet_vmhwm_kb") is not None]
lifetime = any(r.get("vmhwm_is_lifetime") for r in runs)
if rss:
    print(f"| inlet peak RSS during a 5000/s run (VmHWM{', lifetime' if lifetime else ''}), MiB | {max(rss)/1024:.1f} (runs: {', '.join(f'{x/1024:.1f}' for x in rss)}) | — | — | report | — |")
print(f"| inlet peak RSS over the whole script (VmHWM), MiB | {lifetime_hwm/1024:.1f} | — | — | report | — |")
print(f"\ninlet store after the run: {store_bytes/1e6:.1f} MB; raw runs: `{path}`; inlet /metrics at the end: next to it")
EOF

cat "$REPORT"
log "report: $REPORT"
