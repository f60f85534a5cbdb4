#!/usr/bin/env bash
# WebSocket conformance: run Autobahn|Testsuite's fuzzing client against coldbrew.
#
#   bash scripts/autobahn.sh [--subset] [--out DIR]
#
# Starts coldbrew (.venv-test/bin/coldbrew if present, else `coldbrew` on PATH) with
# `-w 1` on 127.0.0.1 and a free port, serving bench/apps/asgi_echo_ws.py (a raw ASGI
# echo app); runs `wstest -m fuzzingclient` against it with a generated spec; writes
# Autobahn's report (index.html, index.json, one .json/.html per case) to DIR
# (default .autobahn/reports), beside coldbrew.log, wstest.log and spec.json; stops the
# server by its PID; then prints the summary of scripts/autobahn_report.py, whose exit
# status this script returns (non-zero when a case FAILED or compression is unimplemented).
#
#   (default)  every case, sections 1-13 (517 cases, about 20 minutes on 2 CPUs, nearly
#              all of it in the compression sections 12 and 13, mostly wstest's own CPU)
#   --subset   under a minute (285 cases): sections 1-7 and 10 whole, 9.1.1 and 9.2.1,
#              and 12.G.1-12.G.3, 13.G.1-13.G.3 for every group G of 12 and of 13
#
# wstest is a Python 2.7 program: it is installed from scripts/autobahn-requirements.txt
# into .autobahn/venv, a virtualenv of pyenv's 2.7.18 (or $AUTOBAHN_PYTHON27) made by an
# old virtualenv (the last ones that still make 2.7 environments) kept in .autobahn/tools.
# Traffic goes to 127.0.0.1 only. Environment: AUTOBAHN_TIMEOUT (seconds wstest may run;
# default 3600, 300 with --subset), COLDBREW (the coldbrew command to test).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

subset=0
out=$ROOT/.autobahn/reports
while [ $# -gt 0 ]; do
    case $1 in
        --subset) subset=1 ;;
        --out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift ;;
        --out=*) out=${1#--out=} ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (usage: bash scripts/autobahn.sh [--subset] [--out DIR])" ;;
    esac
    shift
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

# --- Python 2.7 and wstest -------------------------------------------------------------
py27=${AUTOBAHN_PYTHON27:-${PYENV_ROOT:-${HOME:-/root}/.pyenv}/versions/2.7.18/bin/python}
if ! [ -x "$py27" ] || ! "$py27" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
    die "no Python 2.7 at $py27, which Autobahn|Testsuite's wstest needs (pyenv install 2.7.18, or set AUTOBAHN_PYTHON27)"
fi

VIRTUALENV_PIN='virtualenv==20.21.1'  # the 20.21 line is the last that creates 2.7 environments
REQUIREMENTS=scripts/autobahn-requirements.txt
tools=$ROOT/.autobahn/tools
venv=$ROOT/.autobahn/venv
stamp="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1) $VIRTUALENV_PIN $py27"
if [ "$(cat "$venv/.coldbrew-stamp" 2>/dev/null)" != "$stamp" ] || ! [ -x "$venv/bin/wstest" ]; then
    if ! [ -x "$tools/bin/virtualenv" ] || [ "$("$tools/bin/pip" freeze 2>/dev/null | grep -i '^virtualenv==')" != "$VIRTUALENV_PIN" ]; then
        make_venv python3 "$tools"
        say "pip install $VIRTUALENV_PIN (into $tools)"
        "$tools/bin/pip" install -q "$VIRTUALENV_PIN"
    fi
    say "creating $venv (Python 2.7) and installing $REQUIREMENTS"
    rm -rf "$venv"
    "$tools/bin/virtualenv" -q --no-download -p "$py27" "$venv"
    "$venv/bin/pip" install -q --no-python-version-warning --no-warn-script-location -r "$REQUIREMENTS"
    "$venv/bin/pip" check --no-python-version-warning >/dev/null
    printf '%s\n' "$stamp" >"$venv/.coldbrew-stamp"
fi

# --- coldbrew --------------------------------------------------------------------------
if [ -n "${COLDBREW:-}" ]; then
    coldbrew=$COLDBREW
elif [ -x "$ROOT/.venv-test/bin/coldbrew" ]; then
    coldbrew=$ROOT/.venv-test/bin/coldbrew
elif command -v coldbrew >/dev/null 2>&1; then
    coldbrew=$(command -v coldbrew)
else
    die "no coldbrew: neither .venv-test/bin/coldbrew nor coldbrew on PATH (bash scripts/test.sh builds .venv-test)"
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=ws://127.0.0.1:$port

# Old results would mix with the new ones: remove what wstest writes (only that).
rm -f "$out"/index.html "$out"/index.json "$out"/coldbrew_case_*.json "$out"/coldbrew_case_*.html
spec=$out/spec.json
python3 - "$spec" "$out" "$url" "$subset" <<'EOF'
import json, sys
spec_path, outdir, url, subset = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
if subset:
    # Sections 1-7 and 10 whole; the two smallest of 9 (64 KiB text and binary); and the
    # first three of every compression group: each payload kind of 12, and each
    # negotiated parameter set of 13 (context takeover, window bits).
    cases = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.1.1", "9.2.1", "10.*"]
    cases += [f"12.{g}.{n}" for g in range(1, 6) for n in (1, 2, 3)]
    cases += [f"13.{g}.{n}" for g in range(1, 8) for n in (1, 2, 3)]
else:
    cases = ["*"]
spec = {
    "outdir": outdir,
    "servers": [{"agent": "coldbrew", "url": url}],
    "cases": cases,
    "exclude-cases": [],
    "exclude-agent-cases": {},
}
with open(spec_path, "w") as f:
    json.dump(spec, f, indent=2)
    f.write("\n")
EOF

server_pid=
stop_server() {
    [ -n "$server_pid" ] || return 0
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 150); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$server_pid" 2>/dev/null; then
            say "coldbrew (PID $server_pid) still running 15 s after SIGTERM: SIGKILL"
            kill -KILL "$server_pid" 2>/dev/null || true
        fi
    fi
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting $coldbrew on 127.0.0.1:$port (-w 1, bench/apps/asgi_echo_ws.py)"
"$coldbrew" --bind "127.0.0.1:$port" -w 1 --interface asgi --log-level warning \
    --chdir "$ROOT/bench/apps" asgi_echo_ws:app >"$out/coldbrew.log" 2>&1 &
server_pid=$!
ready=0
for _ in $(seq 1 200); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        break
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        ready=1
        break
    fi
    sleep 0.05
done
if [ "$ready" != 1 ]; then
    sed 's/^/    coldbrew: /' "$out/coldbrew.log" >&2
    die "coldbrew did not start listening on 127.0.0.1:$port (if .venv-test is being reinstalled, rerun)"
fi

if [ "$subset" = 1 ]; then
    what="the subset (sections 1-7, 10, and a few of 9, 12 and 13)"
    limit=${AUTOBAHN_TIMEOUT:-300}
else
    what="every case (sections 1-13)"
    limit=${AUTOBAHN_TIMEOUT:-3600}
fi
say "wstest -m fuzzingclient -s $spec: $what against $url (log: $out/wstest.log)"
start=$(date +%s)
status=0
(cd "$out" && exec timeout "$limit" "$venv/bin/python" -W ignore "$venv/bin/wstest" -m fuzzingclient -s "$spec") \
    >"$out/wstest.log" 2>&1 || status=$?
elapsed=$(( $(date +%s) - start ))
server_alive=1
kill -0 "$server_pid" 2>/dev/null || server_alive=0
stop_server

if [ "$status" != 0 ]; then
    tail -n 20 "$out/wstest.log" | sed 's/^/    wstest: /' >&2
    [ "$status" = 124 ] && die "wstest did not finish within $limit s (AUTOBAHN_TIMEOUT)"
    die "wstest exited with status $status"
fi
[ "$server_alive" = 1 ] || say "WARNING: coldbrew exited during the run; see $out/coldbrew.log"
say "wstest finished in ${elapsed} s; report: $out/index.html"
printf 'wall_seconds=%s\nsubset=%s\nfinished=%s\n' "$elapsed" "$subset" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$out/run.txt"
exec python3 scripts/autobahn_report.py "$out"
