#!/usr/bin/env bash
# The one test command:  bash scripts/test.sh [extra pytest arguments]
#
# Needs only Rust (cargo) and Python 3 (3.10 or newer). It
#   1. creates .venv-test with `python3 -m venv` (kept between runs),
#   2. installs requirements-test.txt and maturin into it,
#   3. builds coldbrew and installs it into .venv-test,
#   4. runs the Rust unit tests (`cargo test`),
#   5. runs the Python test suite (`python -m pytest -q`, tests/ via testpaths).
# It runs both test suites even when the first fails, and exits non-zero if either did.
#
# Environment: PYTHON picks the interpreter (default python3). When run as root on a
# Debian-like system, missing system packages (python3-venv, a C linker, libpython for
# cargo test) are installed with apt-get; otherwise the script says what to install.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=$ROOT/.venv-test
PYTHON=${PYTHON:-python3}

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

need_build_tools "$PYTHON"

# --- 1. the virtual environment -------------------------------------------------------
make_venv "$PYTHON" "$VENV"
PY=$VENV/bin/python
export VIRTUAL_ENV=$VENV
export PATH=$VENV/bin:$PATH
unset CONDA_PREFIX  # maturin refuses to guess when both this and VIRTUAL_ENV are set
export PIP_DISABLE_PIP_VERSION_CHECK=1

# --- 2. test requirements ---------------------------------------------------------------
say "installing requirements-test.txt and maturin"
"$PY" -m pip install -q -r requirements-test.txt 'maturin>=1.5,<2'

# --- 3. build and install coldbrew ------------------------------------------------------
# `maturin develop --release` rather than `pip install .`: it builds in ./target with no
# isolated build environment, so a rebuild after a change recompiles only the crate, and
# it installs python/coldbrew in editable form (the compiled _coldbrew*.so is placed
# beside the sources; .gitignore keeps it out of git), so edits to the Python side need
# no rebuild at all. --release so that the tests exercise the optimised build users get.
# The real wheel path (`pip install .`) is covered by scripts/smoke.sh.
say "building coldbrew (maturin develop --release)"
maturin develop --release
"$PY" -c 'import coldbrew._coldbrew' || die "coldbrew was built but its extension module does not import"

# --- 4. Rust unit tests -----------------------------------------------------------------
# Cargo.toml does not enable pyo3's "extension-module" feature (pyproject.toml adds it for
# maturin builds only), so the test binary links against libpython like any program that
# embeds Python. That needs libpython's link-time file and, for a shared build outside the
# system library path (pyenv, for one), LD_LIBRARY_PATH to find it at run time.
export PYO3_PYTHON=$PY
pyinfo=$("$PY" - <<'EOF'
import os, sysconfig
v = sysconfig.get_config_var
names = ["libpython%s.%s" % (v("LDVERSION"), ext) for ext in ("so", "a", "dylib")]
dirs = [d for d in (v("LIBDIR"), v("LIBPL")) if d]
if v("MULTIARCH") and v("LIBDIR"):
    dirs.append(os.path.join(v("LIBDIR"), v("MULTIARCH")))
found = any(os.path.exists(os.path.join(d, n)) for d in dirs for n in names)
print("yes" if found else "no", v("VERSION"), v("Py_ENABLE_SHARED") or 0, v("LIBDIR") or "")
EOF
)
read -r libpython_found pyver py_shared py_libdir <<<"$pyinfo"
if [ "$libpython_found" = no ]; then
    if can_apt; then
        apt_install "libpython$pyver-dev" || apt_install python3-dev || true
    else
        say "warning: libpython$pyver for linking not found; if cargo test fails to link, install it (Debian/Ubuntu: apt-get install python3-dev)"
    fi
fi
if [ "$py_shared" = 1 ] && [ -n "$py_libdir" ]; then
    export LD_LIBRARY_PATH="$py_libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

cargo_status=0
say "cargo test"
cargo test || cargo_status=$?

# --- 5. Python tests --------------------------------------------------------------------
# The benchmark harness test drives wrk; install it when we can (it skips, saying why, when
# wrk is absent).
if ! command -v wrk >/dev/null 2>&1; then
    if can_apt; then apt_install wrk || true; else say "wrk not found: tests/test_bench_harness.py will skip"; fi
fi

# tests/ is the only entry in testpaths (pyproject.toml); extra arguments go to pytest.
pytest_status=0
say "python -m pytest -q${*:+ $*}"
"$PY" -m pytest -q "$@" || pytest_status=$?

if [ "$cargo_status" != 0 ] || [ "$pytest_status" != 0 ]; then
    say "FAILED: cargo test exited $cargo_status, pytest exited $pytest_status"
    exit 1
fi
say "all tests passed"
