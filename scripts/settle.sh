# Sourced by the bench scripts. settle PORT [TIMEOUT]: bounded wait (TIMEOUT
# seconds, 120 unless given) until the inlet on 127.0.0.1:PORT has no
# pending or running jobs; returns 1 if it still has some by then.
settle() {
  local t0=$SECONDS left
  while ((SECONDS - t0 < ${2:-120})); do
    left=$(curl -s --max-time 2 "127.0.0.1:$1/health" |
      python3 -c 'import sys,json; q=json.load(sys.stdin)["queue"]; print(q["pending"]+q["in_flight"])' 2>/dev/null)
    [ "$left" = 0 ] && return 0
    sleep 0.5
  done
  return 1
}
