"""Apps for tests/test_dispatch.py: a CPU-bound one (`app`) that reports, per request, how many
other requests began while it ran, and one (`waiting`) that blocks until the test lets it go."""

import os
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


def _wait_for(name):
    # Polls with time.sleep, which releases the GIL: an app blocked on I/O.
    path = os.path.join(os.environ["DISPATCH_DIR"], name)
    deadline = time.monotonic() + 20
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)


def waiting(environ, start_response):
    """`/until?NAME` answers once the file NAME exists in $DISPATCH_DIR (`/iterable-until?NAME`
    the same from an iterable that writes NAME.closed when closed); `/stream-until?NAME` sends a
    first chunk at once and the second once NAME exists."""
    name = environ.get("QUERY_STRING", "")
    if environ["PATH_INFO"] == "/stream-until":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def chunks():
            yield b"first;"
            _wait_for(name)
            yield b"second"

        return chunks()
    _wait_for(name)
    body = name.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    if environ["PATH_INFO"] == "/iterable-until":
        return _Closing([body], os.path.join(os.environ["DISPATCH_DIR"], name + ".closed"))
    return [body]


class _Closing:
    """An iterable, not a list (as Flask and Django return), that marks its close() in a file."""

    def __init__(self, chunks, marker):
        self._chunks = chunks
        self._marker = marker

    def __iter__(self):
        return iter(self._chunks)

    def close(self):
        open(self._marker, "w").close()
