# shellcheck shell=bash
# Helpers shared by scripts/test.sh, scripts/serve-example.sh and scripts/smoke.sh.
# Source it; it is not a command. Callers set `set -euo pipefail` themselves.

say() { printf '==> %s\n' "$*"; }
die() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# True when missing system packages can be installed here: root with apt-get.
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

APT_UPDATED=0
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# need_build_tools PYTHON: cargo, a C linker, and Python 3.10+ are what a build needs.
need_build_tools() {
    local python=$1
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup) first"
    command -v "$python" >/dev/null 2>&1 || die "$python not found: install Python 3.10 or newer"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$python is $("$python" -V 2>&1); coldbrew needs Python 3.10 or newer"
    # Rust links through the system C compiler, which a bare Debian lacks.
    if ! command -v cc >/dev/null 2>&1; then
        if can_apt; then
            apt_install gcc libc6-dev
        else
            die "no C compiler/linker (cc) found, which cargo needs: apt-get install gcc"
        fi
    fi
}

# make_venv PYTHON DIR: create DIR as a venv of PYTHON unless a working one is there.
# Debian and Ubuntu ship the venv module (ensurepip) apart from python3: as root it is
# installed with apt-get, otherwise the one line to run is printed.
make_venv() {
    local python=$1 dir=$2
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import pip' >/dev/null 2>&1; then
        return 0
    fi
    say "creating $dir"
    rm -rf "$dir"
    if ! "$python" -m venv "$dir" >/dev/null 2>&1; then
        rm -rf "$dir"
        if can_apt; then
            local ver
            ver=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
            apt_install python3-venv || apt_install "python$ver-venv" || true
            if ! "$python" -m venv "$dir"; then
                rm -rf "$dir"
                die "$python -m venv failed even after installing python3-venv"
            fi
        else
            die "$python -m venv failed: install the venv module (Debian/Ubuntu: apt-get install python3-venv), then rerun"
        fi
    fi
    # pip older than 21.3 builds out of tree, copying all of ./target into a temp dir.
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$dir/bin/python" -m pip install -q 'pip>=21.3'
}
