#!/bin/bash
# Allocator calls per request, by thread, of one inlet binary, counted by
# callgrind (repeatable, unlike times; under load each allocation and free
# costs a cache miss or two that its instructions do not show):
#   scripts/bench-allocs.sh BINARY [PORT]      (REQUESTS=3000 at RATE=200/s)
# Starts BINARY under `valgrind --tool=callgrind --separate-threads=yes` on
# a fresh store (temp dir, 127.0.0.1:PORT), sends REQUESTS single-message
# requests with `inlet bench` (8 connections), stops it with SIGTERM, and
# prints for each thread that allocates at least once per 10 requests: the
# calls into mimalloc's allocating entry points (malloc, realloc, calloc,
# aligned forms) per request, and the callers making most of them
# (TOP=4), which name the thread (the HTTP workers call the provider's
# `parse`). Loopback only.
set -u
bin=$(realpath "$1"); port=${2:-18562}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
. "$ROOT/scripts/callgrind-load.sh"
d=$(mktemp -d "${TMPDIR:-/tmp}/inlet-allocs.XXXXXX")
callgrind_load "$bin" "$port" "$d" --separate-threads=yes
python3 - "$d" "${TOP:-4}" <<'PY'
import collections, glob, json, re, sys
d, top = sys.argv[1], int(sys.argv[2])
n = json.load(open(f"{d}/r.json"))["ok"]
alloc = re.compile(r"^(mi_malloc|mi_zalloc|mi_calloc|mi_realloc|mi_malloc_aligned|mi_zalloc_aligned|"
                   r"mi_realloc_aligned|malloc|realloc|calloc)$")
print(f"{n} requests answered 2xx")
total = 0.0
for f in sorted(glob.glob(f"{d}/cg.out-*")):
    names, by_caller, fn, cfn = {}, collections.Counter(), None, None
    for line in open(f, errors="replace"):
        m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
        if m:
            if m[3]:
                names[m[2]] = m[3]
            if m[1] == "fn":
                fn = names.get(m[2])
            else:
                cfn = names.get(m[2])
        elif line.startswith("calls=") and cfn and alloc.match(cfn.split(" ")[0]):
            by_caller[re.sub(r" \[.*", "", fn or "?")] += int(line.split("=")[1].split()[0])
    calls = sum(by_caller.values()) / n
    if calls < 0.1:
        continue
    total += calls
    print(f"thread {f.rsplit('-', 1)[1]}: {calls:.2f} allocations a request")
    for caller, c in by_caller.most_common(top):
        print(f"    {c / n:5.2f}  {caller[:110]}")
print(f"all threads: {total:.2f} allocations a request")
PY
