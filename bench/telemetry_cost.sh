#!/usr/bin/env bash
# What the access log and the metrics cost on the hello app, measured in one run.
#
#   bash bench/telemetry_cost.sh [ROUNDS] [CONNECTIONS] [SECONDS]   (defaults: 4 64 5)
#
# Each round starts coldbrew three times, interleaved so that noise from a shared machine falls
# on every variant alike: plain, with --access-logfile (text, to a file), and with
# --metrics-bind. The server is pinned to CPU 0 and wrk to CPU 1. Besides wrk's requests/s it
# reports the server's CPU time per request (user + system, all threads, from /proc), which
# the load on the other CPU barely moves, and ends with each variant's median beside its
# baseline. Uses the coldbrew on PATH (or $COLDBREW) and wrk.
#
# VARIANTS="plain access metrics json json-access access-pipe" adds JSON logging
# (--log-format json, the default on Cloud Run) without and with the access log (json-access
# is compared with json), and the access log written to stdout as a container would, into a
# pipe read on the other CPU (access-pipe).
set -euo pipefail
rounds=${1:-4}
conns=${2:-64}
seconds=${3:-5}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
coldbrew=${COLDBREW:-$(command -v coldbrew || true)}
[ -n "$coldbrew" ] || { echo "coldbrew not found: activate its virtualenv or set COLDBREW" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk, or bash bench/run.sh)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$here/apps"

cpu_ticks() { # user + system clock ticks of every thread of $1
    local total=0 fields
    for task in /proc/"$1"/task/*; do
        read -r -a fields < "$task/stat" || continue
        # Fields 14 and 15 (utime, stime), counted after the ')' that ends the command name.
        total=$((total + fields[13] + fields[14]))
    done
    echo "$total"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

read -r -a variants <<<"${VARIANTS:-plain access metrics}"
printf '%-12s %12s %10s %14s\n' variant "requests/s" p99 "CPU us/req"
for round in $(seq "$rounds"); do
    for variant in "${variants[@]}"; do
        port=$(free_port)
        extra=()
        case $variant in
            plain) ;;
            access) extra=(--access-logfile "$work/access.log") ;;
            access-pipe) extra=(--access-logfile -) ;;
            metrics) extra=(--metrics-bind "127.0.0.1:$(free_port)") ;;
            json) extra=(--log-format json) ;;
            json-access) extra=(--log-format json --access-logfile "$work/access.log") ;;
            *) echo "unknown variant $variant" >&2; exit 2 ;;
        esac
        if [ "$variant" = access-pipe ]; then
            WEB_CONCURRENCY=1 taskset -c 0 "$coldbrew" --bind "127.0.0.1:$port" --log-level warning "${extra[@]}" hello:app \
                > >(taskset -c 1 cat >/dev/null) 2>/dev/null &
        else
            WEB_CONCURRENCY=1 taskset -c 0 "$coldbrew" --bind "127.0.0.1:$port" --log-level warning "${extra[@]}" hello:app \
                >/dev/null 2>&1 &
        fi
        pid=$!
        for _ in $(seq 200); do
            curl -s -o /dev/null "http://127.0.0.1:$port/" && break
            sleep 0.05
        done
        taskset -c 1 wrk -t1 -c"$conns" -d1s "http://127.0.0.1:$port/" >/dev/null
        before=$(cpu_ticks "$pid")
        out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${seconds}s" --latency "http://127.0.0.1:$port/")
        after=$(cpu_ticks "$pid")
        requests=$(awk '/requests in/ {print $1}' <<<"$out")
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
        hz=$(getconf CLK_TCK)
        cpu=$(awk -v a="$before" -v b="$after" -v n="$requests" -v hz="$hz" 'BEGIN {printf "%.2f", (b - a) * 1e6 / hz / n}')
        printf '%-12s %12s %10s %14s\n' "$variant" "$rps" "$p99" "$cpu"
        echo "$round $variant $rps $cpu" >>"$work/results"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done

echo
echo "medians over $rounds rounds; in brackets, the median of each round's change against the"
echo "baseline measured beside it in the same round (the machine's swings cancel out there):"
python3 - "$work/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    round_, variant, rps, cpu = line.split()
    runs.setdefault(variant, {})[round_] = (float(rps), float(cpu))
for variant, rounds in runs.items():
    rps = statistics.median(r for r, _ in rounds.values())
    cpu = statistics.median(c for _, c in rounds.values())
    text = f"{variant:<12} {rps:>10,.0f} req/s  {cpu:6.2f} us CPU/req"
    base = "json" if variant == "json-access" else "plain"
    if variant != base and base in runs:
        paired = [(rounds[r], runs[base][r]) for r in rounds if r in runs[base]]
        rps_change = statistics.median(v[0] / b[0] - 1 for v, b in paired)
        cpu_change = statistics.median(v[1] / b[1] - 1 for v, b in paired)
        text += f"  [req/s {100 * rps_change:+.1f}%, CPU/req {100 * cpu_change:+.1f}% vs {base}]"
    print(text)
PY
