#!/usr/bin/env bash
# The README's first command:  bash scripts/serve-example.sh
#
# Builds coldbrew into .venv (`pip install .`, a release build) and serves
# examples/hello.py on http://localhost:8080 (or $PORT). Ctrl-C stops it.
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

need_build_tools "$PYTHON"
make_venv "$PYTHON" "$VENV"

say "pip install . (the first build takes a few minutes)"
"$VENV/bin/python" -m pip install -q "$ROOT"

say "serving examples/hello.py on http://localhost:$PORT (Ctrl-C to stop)"
exec "$VENV/bin/coldbrew" --chdir examples hello:app
