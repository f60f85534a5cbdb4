"""Apps for tests/test_connection_end.py: when a connection ends, and what goes out on it."""

import gc
import threading

from flask import Flask, abort, request

# Reference cycles are never collected in this process: when a connection closes must not
# depend on when (or whether) Python frees the request's objects.
gc.disable()

HELD = []


def cycle_app(environ, start_response):
    """Answers without reading the body, and keeps the environ alive through a cycle."""
    environ["me"] = environ
    if environ["PATH_INFO"] == "/held":
        # Held for good: not even reference counting frees it.
        HELD.append(environ)
    body = b"refused without reading the body\n"
    start_response("400 Bad Request", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


flask_app = Flask(__name__)


@flask_app.post("/upload")
def upload():
    # Flask's abort() leaves the body unread and creates reference cycles of its own.
    abort(400)


@flask_app.get("/ok")
def ok():
    return "ok"


def case_app(environ, start_response):
    """Header names written in every case an app might use."""
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("ETag", '"v1"'),
            ("x-lower", "1"),
            ("X-Request-ID", "abc"),
            ("WWW-Authenticate", "Basic"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("Content-Length", "2"),
        ],
    )
    return [b"ok"]


def peer_app(environ, start_response):
    body = environ["REMOTE_ADDR"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


STREAMED = threading.Event()
CHUNK = b"x" * 65536


def stream_app(environ, start_response):
    """Streams 64 MiB, far more than a client that reads nothing can take."""
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def body():
        try:
            for _ in range(1024):
                yield CHUNK
        finally:
            # The iteration ended: the app's thread is free again.
            print("stream ended", flush=True)

    return body()
