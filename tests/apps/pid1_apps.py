"""WSGI app used by tests/test_pid1.py, where coldbrew is PID 1 of a PID namespace.

Pids in responses are as seen inside the namespace.

  /pid       "<pid> <ppid>" of the process serving the request
  /orphan    ?tag=TAG: start an orphan and return its pid. `sh` starts a background subshell
             and exits at once, so the subshell is reparented to the namespace's PID 1; it
             lives until the file <PID1_APPS_STATE_DIR>/<TAG>.release exists, then exits.
  /exit7     run `sh -c "exit 7"` and return its exit status (subprocess.run's returncode)
  /sleep     ?s=SECONDS&tag=TAG: create <PID1_APPS_STATE_DIR>/<TAG>.started, sleep, "slept"
"""

import os
import subprocess
import time
from urllib.parse import parse_qs

ORPHAN = 'while [ ! -e "$1" ]; do sleep 0.05; done'


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _state(name):
    return os.path.join(os.environ["PID1_APPS_STATE_DIR"], name)


def _plain(start_response, body, status="200 OK"):
    body = body.encode()
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = _query(environ)

    if path == "/pid":
        return _plain(start_response, f"{os.getpid()} {os.getppid()}")

    if path == "/orphan":
        release = _state(query["tag"] + ".release")
        # The subshell's output goes nowhere, so reading sh's output ends when sh exits.
        script = f"( {ORPHAN} ) </dev/null >/dev/null 2>&1 & echo $!"
        done = subprocess.run(["sh", "-c", script, "sh", release], capture_output=True, text=True, check=True)
        return _plain(start_response, done.stdout.strip())

    if path == "/exit7":
        return _plain(start_response, str(subprocess.run(["sh", "-c", "exit 7"]).returncode))

    if path == "/sleep":
        with open(_state(query["tag"] + ".started"), "w") as f:
            f.write(str(time.time()))
        time.sleep(float(query.get("s", "1")))
        return _plain(start_response, "slept")

    return _plain(start_response, "not found", "404 Not Found")
