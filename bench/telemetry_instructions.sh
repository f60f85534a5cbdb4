#!/usr/bin/env bash
# What the access log costs in instructions per request, counted by valgrind's callgrind:
# the same count on every run, where requests/s on a shared machine move by several percent.
#
#   [CONNECTIONS=64] bash bench/telemetry_instructions.sh [REQUESTS] [REPEATS] [-- EXTRA SERVER ARGS]
#                                        (defaults: 3000 3; e.g. -- --log-format json)
#
# For each variant (plain, and with --access-logfile to a file) the server runs under
# callgrind twice: answering REQUESTS keep-alive requests spread over CONNECTIONS concurrent
# connections, and answering none. Many requests in flight at once, as under wrk, matter:
# with one client at a time, per-request state is reused in ways it is not under load, and a
# count taken that way once hid an allocation per request. The difference, divided by
# REQUESTS, is what one request costs, start-up and shutdown excluded. Counts all threads of the server, user space only (the kernel's share of a
# request, its socket and file writes, is not in it). Uses the coldbrew on PATH (or
# $COLDBREW); installs valgrind with apt-get when it is missing and this is root on Debian.
# PYTHONHASHSEED is fixed so that Python's own dict lookups do not vary between runs; the
# allocator's work still does, with the way the I/O and Python threads interleave, by a few
# hundred instructions per request. Each variant is measured REPEATS times, interleaved, and
# the median is printed.
set -euo pipefail
# A failure inside $(...) stops the script too, instead of printing a count of 0.
shopt -s inherit_errexit
requests=3000
repeats=3
connections=${CONNECTIONS:-64}
if [ $# -gt 0 ] && [ "$1" != -- ]; then requests=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" != -- ]; then repeats=$1; shift; fi
if [ $# -gt 0 ] && [ "$1" = -- ]; then shift; fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here/../scripts/lib.sh"
coldbrew=${COLDBREW:-$(command -v coldbrew || true)}
[ -n "$coldbrew" ] || die "coldbrew not found: activate its virtualenv or set COLDBREW"
# The server runs in apps/, so a relative path is resolved here.
case $coldbrew in */*) coldbrew=$(realpath "$coldbrew") ;; esac
if ! command -v valgrind >/dev/null 2>&1; then
    can_apt || die "valgrind not found: install it (Debian/Ubuntu: apt-get install valgrind) and rerun"
    apt_install valgrind
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$here/apps"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# count N ARGS...: instructions of a whole server run that answers N requests
count() {
    local n=$1 port out pid
    shift
    port=$(free_port)
    out=$work/callgrind.out
    PYTHONHASHSEED=0 WEB_CONCURRENCY=1 valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$coldbrew" --bind "127.0.0.1:$port" --log-level warning "$@" hello:app >/dev/null 2>"$work/stderr" &
    pid=$!
    for _ in $(seq 600); do
        curl -s -o /dev/null "http://127.0.0.1:$port/" && break
        kill -0 "$pid" 2>/dev/null || { cat "$work/stderr" >&2; die "coldbrew did not start under valgrind"; }
        sleep 0.1
    done
    python3 - "$port" "$n" "$connections" <<'PY'
import asyncio, sys
port, n, connections = (int(a) for a in sys.argv[1:])

async def client(count):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(count):
        writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head[:40]
        length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        await reader.readexactly(length)
    writer.close()

async def main():
    # The requests are spread over the connections, so that as under wrk many are in flight at once.
    shares = [n // connections + (i < n % connections) for i in range(connections)]
    await asyncio.gather(*(client(share) for share in shares if share))

asyncio.run(main())
PY
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    awk '/^summary:/ {print $2}' "$out"
}

per_request() { # ARGS...
    local none many
    none=$(count 0 "$@")
    rm -f "$work/access.log"
    many=$(count "$requests" "$@")
    awk -v a="$none" -v b="$many" -v n="$requests" 'BEGIN {printf "%.0f\n", (b - a) / n}'
}

median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

say "callgrind, hello app, $requests keep-alive requests over $connections connections per run, $repeats runs per variant (a few seconds per run)"
for round in $(seq "$repeats"); do
    p=$(per_request "$@")
    a=$(per_request --access-logfile "$work/access.log" "$@")
    echo "$p" >>"$work/plain"
    echo "$a" >>"$work/access"
    printf 'run %d: plain %s, access %s\n' "$round" "$p" "$a"
done
plain=$(median <"$work/plain")
access=$(median <"$work/access")
lines=$(wc -l <"$work/access.log")
printf 'medians:\n%-8s %8s instructions/request\n' plain "$plain"
printf '%-8s %8s instructions/request  (%+.1f%%; %s lines logged: the requests and the readiness probe)\n' access "$access" \
    "$(awk -v a="$access" -v p="$plain" 'BEGIN {print (a - p) * 100 / p}')" "$lines"
