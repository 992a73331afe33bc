#!/bin/bash
# Instructions per request of one inlet binary, counted by callgrind (repeatable
# on a noisy machine, unlike times):
#   scripts/bench-instr.sh BINARY [PORT]      (REQUESTS=3000 at RATE=200/s)
# Starts BINARY under `valgrind --tool=callgrind` on a fresh store (temp dir,
# 127.0.0.1:PORT), sends REQUESTS single-message requests with `inlet bench`,
# stops it with SIGTERM and prints the inclusive instructions per request of
# the HTTP connection task (hyper's dispatcher, our handler inside), the
# SQLite apply, and the whole process. (A function inlined into its callers
# is split over several entries, one per source file, so smaller functions'
# figures would be partial; `callgrind_annotate --tree=calling` shows them.)
# Loopback only.
set -u
bin=$(realpath "$1"); port=${2:-18560}; n=${REQUESTS:-3000}; rate=${RATE:-200}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
d=$(mktemp -d "${TMPDIR:-/tmp}/inlet-instr.XXXXXX")
trap 'pkill -TERM -f "callgrind-out-file=$d/cg.out" 2>/dev/null; rm -rf "$d"' EXIT
(cd "$d" && RUST_LOG=warn INLET_SERVER__LISTEN=127.0.0.1:$port exec valgrind --tool=callgrind \
  --callgrind-out-file="$d/cg.out" "$bin" serve > log 2>&1) &
for _ in $(seq 120); do curl -sf "127.0.0.1:$port/health" > /dev/null && break; sleep 1; done
"$ROOT/target/release/inlet" bench --url "http://127.0.0.1:$port/hooks/sms" --rate "$rate" \
  --duration "$((n / rate))" --warmup 0 --connections 8 --quiet --json > "$d/r.json"
sleep 3
pkill -TERM -f "callgrind-out-file=$d/cg.out"
for _ in $(seq 60); do pgrep -f "callgrind-out-file=$d/cg.out" > /dev/null || break; sleep 1; done
callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$d/cg.out" 2> /dev/null > "$d/incl.txt"
# The connection task: hyper's dispatcher with our handler inside (with
# LTO its own poll_catch is inlined into our accept loop's closure).
# A function is named with its binary (" [...]") at its first entry only.
for f in '/src/http/server.rs:inlet::http::server::serve::\{\{closure\}\}::\{\{closure\}\}' 'writer::apply'; do
  l=$(grep -m1 -E "$f( \[|$)" "$d/incl.txt"); c=$(echo "$l" | awk '{gsub(",","",$1); print $1+0}')
  printf '%-60s %8d instructions per request\n' "$(echo "$f" | tr -d '\\')" "$((c / n))"
done
tot=$(grep -m1 'PROGRAM TOTALS' "$d/incl.txt" | awk '{gsub(",","",$1); print $1+0}')
printf '%-60s %8d instructions per request\n' "whole process (start-up included)" "$((tot / n))"
