#!/usr/bin/env bash
# The README's first command:  bash scripts/serve-example.sh [hello|flask|django|fastapi]
#
# Builds coldbrew into .venv (`pip install .`, a release build) and serves one of examples/
# on http://localhost:8080 (or $PORT): hello.py by default, which needs nothing else;
# `flask`, `django` or `fastapi` first installs that framework into .venv (the only time this script
# downloads anything beyond coldbrew's own build), then serves flask_app.py, django_app.py or fastapi_app.py.
# Ctrl-C stops it.
# Needs Rust (cargo) and Python 3.10+; PYTHON picks the interpreter (default python3).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PYTHON=${PYTHON:-python3}
export PORT=${PORT:-8080}
export PIP_DISABLE_PIP_VERSION_CHECK=1

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# The same lower bounds as requirements-test.txt, under which the examples are tested.
case "${1:-hello}" in
    hello) app=hello:app framework= ;;
    flask) app=flask_app:app framework='flask>=3.0' ;;
    django) app=django_app:app framework='django>=4.2' ;;
    fastapi) app=fastapi_app:app framework='fastapi>=0.110' ;;
    *)
        printf 'usage: bash scripts/serve-example.sh [hello|flask|django|fastapi]\n' >&2
        exit 2
        ;;
esac
if [ $# -gt 1 ]; then
    printf 'usage: bash scripts/serve-example.sh [hello|flask|django|fastapi]\n' >&2
    exit 2
fi

need_build_tools "$PYTHON"
make_venv "$PYTHON" "$VENV"

say "pip install . (the first build takes a few minutes)"
"$VENV/bin/python" -m pip install -q "$ROOT"
if [ -n "$framework" ]; then
    say "pip install $framework (for examples/${app%%:*}.py)"
    "$VENV/bin/python" -m pip install -q "$framework"
fi

say "serving examples/${app%%:*}.py on http://localhost:$PORT (Ctrl-C to stop)"
exec "$VENV/bin/coldbrew" --chdir examples "$app"
