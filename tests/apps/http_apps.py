"""WSGI app used by tests/test_http1.py, test_lifecycle.py and test_concurrency.py.

One app, routed on PATH_INFO:

  /echo-body       read wsgi.input to EOF, return it (with Content-Length)
  /ignore-body     never touch wsgi.input, return b"ignored"
  /stream          generator body, no Content-Length; ?parts=a,b,c
  /stream-length   generator body with the app's own Content-Length
  /status/<code>   empty body with that status (204, 304, ...)
  /sleep           sleep ?s=SECONDS, then return b"slept"
  /big             ?n=BYTES of b"x" in 64 KiB pieces, with Content-Length
  /ident           "<threading.get_ident()> <thread name>"
  /raise           raise before start_response
  anything else    "<METHOD> <PATH_INFO>[?<QUERY_STRING>]", with Content-Length

If HTTP_APPS_STATE_DIR is set in the environment, /sleep and /big create the
file <dir>/<tag>.started (tag from ?tag=...) when the app starts handling them,
so a test can wait until a request is really inside the app.
"""

import os
import threading
import time
from urllib.parse import parse_qs


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _mark_started(query):
    state_dir = os.environ.get("HTTP_APPS_STATE_DIR")
    tag = query.get("tag")
    if state_dir and tag:
        with open(os.path.join(state_dir, tag + ".started"), "w") as f:
            f.write(str(time.time()))


def _plain(start_response, body, status="200 OK", extra=()):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body))), *extra])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = _query(environ)

    if path == "/echo-body":
        stream = environ["wsgi.input"]
        pieces = []
        while True:
            piece = stream.read(8192)
            if not piece:
                break
            pieces.append(piece)
        return _plain(start_response, b"".join(pieces))

    if path == "/ignore-body":
        return _plain(start_response, b"ignored")

    if path == "/stream":
        parts = query.get("parts", "alpha,beta,gamma").split(",")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (p.encode() for p in parts)

    if path == "/stream-length":
        parts = [b"one-", b"two-", b"three"]
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(sum(map(len, parts))))])
        return iter(parts)

    if path.startswith("/status/"):
        code = int(path.rsplit("/", 1)[1])
        reason = {204: "No Content", 304: "Not Modified"}.get(code, "Whatever")
        headers = [("ETag", '"v1"')] if code == 304 else []
        start_response(f"{code} {reason}", headers)
        return []

    if path == "/sleep":
        _mark_started(query)
        time.sleep(float(query.get("s", "1")))
        return _plain(start_response, b"slept")

    if path == "/big":
        _mark_started(query)
        n = int(query.get("n", str(512 * 1024)))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        piece = 64 * 1024
        return (b"x" * min(piece, n - i) for i in range(0, n, piece))

    if path == "/ident":
        t = threading.current_thread()
        return _plain(start_response, f"{threading.get_ident()} {t.name}".encode())

    if path == "/raise":
        raise RuntimeError("http_apps deliberate failure marker-7f3a")

    qs = environ.get("QUERY_STRING", "")
    text = f"{environ['REQUEST_METHOD']} {path}" + (f"?{qs}" if qs else "")
    return _plain(start_response, text.encode())
