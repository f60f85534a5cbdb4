"""The echo app of tests/test_conformance.py and tests/test_bad_input.py.

``app`` answers every request with a JSON object describing what reached it: the method, the
target as the environ carries it (PATH_INFO, QUERY_STRING, RAW_URI when the server sets one),
SERVER_PROTOCOL, every HTTP_* entry with CONTENT_TYPE and CONTENT_LENGTH, and the body read
from wsgi.input to its end (base64, so any byte survives). Strings are latin-1 "bytes as
code points", as PEP 3333 has them, and JSON keeps them exact.

Every call is counted, so a test can prove a malformed request never reached the app:
``GET /__calls`` answers the number of calls before it (it does not count itself).
``/__ignore-body`` answers without touching wsgi.input; ``/__catch-body-error`` reads
wsgi.input and answers 200 with the error's text if reading it raises OSError.
``/__respond`` answers as its query says, to test what the server does with an app's
response: ``status`` (e.g. ``204 No Content``), ``h`` (a ``Name:value`` header, repeatable),
``body``, and ``stream`` to send the body as a generator of two pieces without a length.
"""

import base64
import json
import threading
import urllib.parse

_lock = threading.Lock()
_calls = 0


def _json(start_response, obj, status="200 OK"):
    body = json.dumps(obj).encode("ascii")
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    global _calls
    path = environ.get("PATH_INFO", "")
    if path == "/__calls":
        with _lock:
            return _json(start_response, {"calls": _calls})
    with _lock:
        _calls += 1
    if path == "/__ignore-body":
        return _json(start_response, {"ignored": True})
    if path == "/__respond":
        query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        headers = [tuple(h.split(":", 1)) for h in query.get("h", [])]
        start_response(query.get("status", ["200 OK"])[0], headers)
        body = query.get("body", [""])[0].encode("latin-1")
        if "stream" in query:
            return (piece for piece in (body[:1], body[1:]))
        return [body]
    if path == "/__catch-body-error":
        try:
            data = environ["wsgi.input"].read()
        except OSError as err:
            return _json(start_response, {"error": str(err)})
        return _json(start_response, {"read": len(data)})

    stream = environ["wsgi.input"]
    pieces = []
    while True:
        piece = stream.read(65536)
        if not piece:
            break
        pieces.append(piece)
    headers = {
        key: value
        for key, value in environ.items()
        if key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")
    }
    return _json(start_response, {
        "method": environ["REQUEST_METHOD"],
        "path": path,
        "query": environ.get("QUERY_STRING", ""),
        "raw_uri": environ.get("RAW_URI"),
        "protocol": environ["SERVER_PROTOCOL"],
        "headers": headers,
        "body_b64": base64.b64encode(b"".join(pieces)).decode("ascii"),
    })
