#!/usr/bin/env bash
# What the access log and the metrics cost on the hello app, measured in one run.
#
#   bash bench/telemetry_cost.sh [ROUNDS] [SECONDS] [CONNECTIONS]   (defaults: 40 1 64)
#
# Starts one server per variant up front (pinned to CPU 0) and sends each a short wrk burst
# (on CPU 1) per round, interleaved; prints each variant's median requests/s and CPU time
# per request, and its change against its baseline in the same rounds. See telemetry_cost.py.
#
# VARIANTS (default "plain plain-again access metrics") picks from: plain, plain-again (a
# second plain server: the noise floor), access (text lines to a file), access-null (to
# /dev/null), access-pipe (to stdout, a pipe read on the other CPU, as in a container),
# metrics, json (--log-format json, the default on Cloud Run), and json-access,
# json-access-null and json-access-pipe (JSON lines to a file, /dev/null or a pipe, compared
# with json). RAW=FILE also writes every burst's figures as JSON. Uses the coldbrew on PATH
# (or $COLDBREW) and wrk.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
coldbrew=${COLDBREW:-$(command -v coldbrew || true)}
[ -n "$coldbrew" ] || { echo "coldbrew not found: activate its virtualenv or set COLDBREW" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk, or bash bench/run.sh)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "needs two CPUs: the server on CPU 0, wrk on CPU 1" >&2; exit 1; }
exec python3 "$here/telemetry_cost.py" --coldbrew "$coldbrew" --rounds "${1:-40}" --seconds "${2:-1}" \
    --connections "${3:-64}" --variants "${VARIANTS:-plain plain-again access metrics}" ${RAW:+--raw "$RAW"}
