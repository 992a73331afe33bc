# Sourced by bench-instr.sh and bench-allocs.sh: runs one inlet binary
# under callgrind on a fresh store and loads it.
#   callgrind_load BINARY PORT DIR [VALGRIND_ARGS...]
# Starts BINARY `serve` under `valgrind --tool=callgrind` in DIR
# (127.0.0.1:PORT, profile DIR/cg.out), sends $REQUESTS (3000)
# single-message requests at $RATE (200)/s with `inlet bench` over 8
# connections (result DIR/r.json), then stops it with SIGTERM and waits
# for the profile. Sets `n` to the number of requests. Loopback only.
callgrind_load() {
  local bin=$1 port=$2 d=$3 rate=${RATE:-200}
  shift 3
  n=${REQUESTS:-3000}
  # Expanded now: `d` is this function's own, gone when the trap runs.
  trap "pkill -TERM -f 'callgrind-out-file=$d/cg.out' 2>/dev/null; rm -rf '$d'" EXIT
  (cd "$d" && RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:$port exec valgrind --tool=callgrind \
    "$@" --callgrind-out-file="$d/cg.out" "$bin" serve > log 2>&1) &
  for _ in $(seq 120); do curl -sf "127.0.0.1:$port/health" > /dev/null && break; sleep 1; done
  "$ROOT/target/release/inlet" bench --url "http://127.0.0.1:$port/hooks/sms" --rate "$rate" \
    --duration "$((n / rate))" --warmup 0 --connections 8 --quiet --json > "$d/r.json"
  sleep 3
  pkill -TERM -f "callgrind-out-file=$d/cg.out"
  for _ in $(seq 60); do pgrep -f "callgrind-out-file=$d/cg.out" > /dev/null || break; sleep 1; done
}
