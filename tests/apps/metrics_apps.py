"""WSGI app used by tests/test_metrics.py.

Routed on PATH_INFO, for any method:

  /ok              200, b"ok"
  /missing         404, b"no such thing"
  /redirect        302 to /ok, empty body
  /boom            raise before start_response (the server answers 500)
  /echo            read wsgi.input to EOF, return it (200)
  /sleep           sleep ?s=SECONDS (default 1), then return b"slept"
  anything else    200, b"app:<PATH_INFO>" (so /metrics on the app port is the app's)

If METRICS_APPS_STATE_DIR is set, /sleep creates <dir>/<tag>.started (tag from ?tag=...)
when the app starts handling it, so a test knows the request holds a Python thread.
"""

import os
import time
from urllib.parse import parse_qs


def _respond(start_response, status, body, extra=()):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *extra])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")

    if path == "/ok":
        return _respond(start_response, "200 OK", b"ok")

    if path == "/missing":
        return _respond(start_response, "404 Not Found", b"no such thing")

    if path == "/redirect":
        return _respond(start_response, "302 Found", b"", [("Location", "/ok")])

    if path == "/boom":
        raise RuntimeError("metrics_apps deliberate failure")

    if path == "/echo":
        stream = environ["wsgi.input"]
        pieces = []
        while True:
            piece = stream.read(65536)
            if not piece:
                break
            pieces.append(piece)
        return _respond(start_response, "200 OK", b"".join(pieces))

    if path == "/sleep":
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        state_dir = os.environ.get("METRICS_APPS_STATE_DIR")
        tag = query.get("tag")
        if state_dir and tag:
            with open(os.path.join(state_dir, tag + ".started"), "w") as f:
                f.write(str(time.time()))
        time.sleep(float(query.get("s", "1")))
        return _respond(start_response, "200 OK", b"slept")

    return _respond(start_response, "200 OK", f"app:{path}".encode())
