#!/usr/bin/env bash
# The benchmark command:  bash bench/run.sh [options]
#
# Measures coldbrew beside gunicorn, waitress, uWSGI and granian (WSGI) and beside granian,
# uvicorn and hypercorn (ASGI) in one run and writes bench/results/<UTC timestamp>.json,
# bench/results/latest.json, docs/benchmarks.md and docs/benchmarks-hello.svg. Unless
# --no-setup is given it first
#   1. installs wrk with apt-get when it is missing (root on Debian/Ubuntu),
#   2. creates bench/.venv-coldbrew and builds coldbrew from this checkout into it
#      (`pip install .`, a release build, redone every run so the current tree is measured;
#      cargo's files go to bench/.cargo-target so the next build is incremental),
#      plus Flask, Django, FastAPI, Starlette and uvloop,
#   3. creates bench/.venv-peers with gunicorn, waitress, pyuwsgi, granian, uvicorn[standard]
#      (uvloop, httptools, websockets), hypercorn, Flask, Django, FastAPI and Starlette.
# Then it runs bench/run.py with every argument (see `python3 bench/run.py --help`):
#   --servers coldbrew,granian,...   --scenarios hello,flask,asgi-hello,...|wsgi|asgi
#   --asgi (the ASGI scenarios only)   --duration S (default 10)   --quick (1 s runs)
#   --no-setup   --coldbrew-python PATH   --peers-python PATH   --no-docs
# PYTHON picks the interpreter for the virtual environments (default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
BENCH=$ROOT/bench
PYTHON=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
say() { printf '==> [bench] %s\n' "$*"; }

setup=1
servers=all
coldbrew_python=
prev=
for arg in "$@"; do
    case $prev in
        --servers) servers=$arg ;;
        --coldbrew-python) coldbrew_python=$arg ;;
    esac
    case $arg in
        --no-setup) setup=0 ;;
        --servers=*) servers=${arg#--servers=} ;;
        --coldbrew-python=*) coldbrew_python=${arg#--coldbrew-python=} ;;
        -h|--help) exec "$PYTHON" "$BENCH/run.py" --help ;;
    esac
    prev=$arg
done

wants() {  # wants NAME: true when NAME is among the servers to measure
    [ "$servers" = all ] && return 0
    [[ ",$servers," == *",$1,"* ]]
}
wants_peers() {
    [ "$servers" = all ] && return 0
    local s
    for s in granian gunicorn uwsgi waitress uvicorn hypercorn; do wants "$s" && return 0; done
    return 1
}

if [ "$setup" = 1 ]; then
    # --- wrk ------------------------------------------------------------------------------
    if ! command -v wrk >/dev/null 2>&1; then
        can_apt || die "wrk not found: install it (Debian/Ubuntu: apt-get install wrk) and rerun"
        apt_install wrk
    fi
    command -v taskset >/dev/null 2>&1 || { can_apt && apt_install util-linux; } || true

    # --- coldbrew, built from this checkout -------------------------------------------------
    if wants coldbrew && [ -z "$coldbrew_python" ]; then
        need_build_tools "$PYTHON"
        make_venv "$PYTHON" "$BENCH/.venv-coldbrew"
        say "installing maturin, flask, django, fastapi, starlette and uvloop into bench/.venv-coldbrew"
        "$BENCH/.venv-coldbrew/bin/python" -m pip install -q 'maturin>=1.5,<2' flask django \
            fastapi starlette uvloop
        say "building coldbrew from $ROOT (pip install ., release build)"
        t0=$SECONDS
        CARGO_TARGET_DIR=$BENCH/.cargo-target \
            "$BENCH/.venv-coldbrew/bin/python" -m pip install -q --no-build-isolation --no-deps \
            --force-reinstall "$ROOT"
        "$BENCH/.venv-coldbrew/bin/python" -c 'import coldbrew._coldbrew' \
            || die "coldbrew was built but its extension module does not import"
        say "coldbrew built in $((SECONDS - t0)) s"
    fi

    # --- the peers --------------------------------------------------------------------------
    if wants_peers; then
        make_venv "$PYTHON" "$BENCH/.venv-peers"
        say "installing gunicorn, waitress, pyuwsgi, granian, uvicorn, hypercorn, flask, django," \
            "fastapi and starlette into bench/.venv-peers"
        # uvicorn[standard] brings uvloop, httptools and websockets (its --loop uvloop, --http
        # httptools and websocket support); hypercorn's uvloop worker and granian's --loop
        # uvloop use the same uvloop.
        "$BENCH/.venv-peers/bin/python" -m pip install -q gunicorn waitress pyuwsgi granian flask django \
            'uvicorn[standard]' hypercorn fastapi starlette uvloop httptools websockets
    fi
fi

command -v wrk >/dev/null 2>&1 || die "wrk not found: rerun without --no-setup, or apt-get install wrk"
say "python3 bench/run.py $*"
exec "$PYTHON" "$BENCH/run.py" "$@"
