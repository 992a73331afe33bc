# Sourced by the A/B scripts. settle PORT: bounded wait (120 s) until the
# inlet on 127.0.0.1:PORT has no pending or running jobs.
settle() {
  for _ in $(seq 240); do
    p=$(curl -s "127.0.0.1:$1/health" | python3 -c 'import sys,json; q=json.load(sys.stdin)["queue"]; print(q["pending"]+q["in_flight"])')
    [ "$p" = 0 ] && return; sleep 0.5
  done
}
