#!/usr/bin/env bash
# Smoke test for one interpreter:  bash scripts/smoke.sh PYTHON
#
# Builds and installs coldbrew the way users do (`pip install .`, a release wheel) into a
# throwaway venv /tmp/coldbrew-smoke-<X.Y>, serves examples/hello.py on a free loopback
# port, fetches it once with that interpreter's urllib, then stops the server with SIGTERM
# and expects exit status 0.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: bash scripts/smoke.sh PYTHON   (e.g. ~/.pyenv/versions/3.12.1/bin/python3)" >&2
    exit 2
fi
PYTHON=$1
if [[ $PYTHON == */* ]]; then
    PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
say() { printf '==> [smoke %s] %s\n' "${VER:-?}" "$*"; }

need_build_tools "$PYTHON"
VER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
VENV=/tmp/coldbrew-smoke-$VER
LOG=$VENV/server.log
export PIP_DISABLE_PIP_VERSION_CHECK=1

say "$("$PYTHON" -VV | head -n 1)"
rm -rf "$VENV"
make_venv "$PYTHON" "$VENV"

say "pip install . (release build)"
"$VENV/bin/python" -m pip install -q "$ROOT"

PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

say "coldbrew --bind 127.0.0.1:$PORT --chdir examples hello:app"
env -u COLDBREW_CMD_ARGS "$VENV/bin/coldbrew" --bind "127.0.0.1:$PORT" --chdir examples hello:app \
    </dev/null >"$LOG" 2>&1 &
SERVER_PID=$!

fail() {
    echo "---- server output ($LOG) ----" >&2
    cat "$LOG" >&2 || true
    die "$*"
}

# One request once the port answers; gives up if the server exits or 60 s pass.
"$VENV/bin/python" - "$PORT" "$SERVER_PID" <<'EOF' || fail "request to hello:app failed"
import os, sys, time, urllib.request

port, pid = int(sys.argv[1]), int(sys.argv[2])
deadline = time.monotonic() + 60
while True:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("server exited before it answered")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            status, body = r.status, r.read()
        break
    except (ConnectionError, urllib.error.URLError) as e:
        if time.monotonic() > deadline:
            sys.exit(f"no answer within 60 s: {e}")
        time.sleep(0.05)
if status != 200 or body != b"Hello, World!":
    sys.exit(f"unexpected response: {status} {body[:100]!r}")
print(f"GET / -> {status} {body.decode()}")
EOF

say "SIGTERM"
kill -TERM "$SERVER_PID"
for _ in $(seq 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$SERVER_PID" 2>/dev/null && fail "server still running 15 s after SIGTERM"
status=0
wait "$SERVER_PID" || status=$?
SERVER_PID=
[ "$status" = 0 ] || fail "server exited with status $status after SIGTERM (expected 0)"
say "ok: served hello:app and stopped cleanly"
rm -rf "$VENV"
