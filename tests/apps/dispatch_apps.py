"""A CPU-bound app that reports, per request, how many other requests began while it ran."""

import threading
import time

_lock = threading.Lock()
_started = [0]


def app(environ, start_response):
    milliseconds = float(environ.get("QUERY_STRING") or "1")
    with _lock:
        _started[0] += 1
        mine = _started[0]
    # Pure Python work: holds the GIL the whole time, as a template render or JSON encoding does.
    until = time.perf_counter() + milliseconds / 1000
    spins = 0
    while time.perf_counter() < until:
        spins += 1
    with _lock:
        began_meanwhile = _started[0] - mine
    body = f"{began_meanwhile}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
