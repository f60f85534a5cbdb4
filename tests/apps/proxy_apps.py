"""WSGI app for tests/test_proxy_headers.py and test_slow_clients.py.

  /count    how many requests the app saw before this one
  /body     read wsgi.input to EOF and answer its length; a read error is re-raised
  /catch    read wsgi.input to EOF; on an error answer 200 with the exception's type and text
  anything  "REMOTE_ADDR REMOTE_PORT wsgi.url_scheme HTTP_X_FORWARDED_FOR HTTP_FORWARDED"
            ("-" for a missing key)
"""

import threading

_lock = threading.Lock()
_calls = 0


def _plain(start_response, body, status="200 OK"):
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    global _calls
    with _lock:
        seen = _calls
        _calls += 1
    path = environ.get("PATH_INFO", "")
    if path == "/count":
        return _plain(start_response, str(seen).encode())
    if path == "/body":
        return _plain(start_response, str(len(environ["wsgi.input"].read())).encode())
    if path == "/catch":
        try:
            n = len(environ["wsgi.input"].read())
        except Exception as err:  # noqa: BLE001 - the test looks at what was raised
            return _plain(start_response, f"{type(err).__name__}: {err}".encode())
        return _plain(start_response, str(n).encode())
    keys = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED")
    return _plain(start_response, " ".join(environ.get(k, "-").replace(" ", "") for k in keys).encode())
