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
bin=$(realpath "$1"); port=${2:-18560}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/callgrind-load.sh"
d=$(mktemp -d "${TMPDIR:-/tmp}/inlet-instr.XXXXXX")
callgrind_load "$bin" "$port" "$d"
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
