"""WSGI app used by tests/test_telemetry.py.

Routed on PATH_INFO, for any method:

  /log             logging.getLogger("app").info("hello from the app tag=<tag>") (tag from
                   ?tag=...), at the line marked LOG-CALL below; returns b"logged"
  /warn            logging.getLogger("app").warning("app warning tag=<tag>"); returns b"warned"
  /exception       logging.getLogger("app").exception(...) inside an except block
  /raise           raise RuntimeError before start_response (the server answers 500)
  /raise-path      raise RuntimeError whose message holds the decoded PATH_INFO
  /log-header      log the X-Evil request header's value (latin-1 decoded), return b"ok"
  /trace-id        return environ["coldbrew.trace_id"], or b"<absent>" without that key
  /concurrent      log "concurrent tag=<tag> step=before", wait on a 4-party barrier, sleep
                   a little, log "... step=after"; returns the tag
  /status          empty body with status ?code=NNN
  /bytes           ?n=BYTES of b"x", text/plain with Content-Length
  /sleep           sleep ?ms=N milliseconds, then 200, b"slept"
  anything else    200, b"ok" (text/plain)
"""

import logging
import threading
import time
from urllib.parse import parse_qs

log = logging.getLogger("app")

# The concurrent route makes four requests meet inside the app at once.
_barrier = threading.Barrier(4)


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _respond(start_response, status, body, content_type="text/plain"):
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def log_hello(tag):
    log.info("hello from the app tag=%s", tag)  # LOG-CALL


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = _query(environ)

    if path == "/log":
        log_hello(query.get("tag", "-"))
        return _respond(start_response, "200 OK", b"logged")

    if path == "/warn":
        log.warning("app warning tag=%s", query.get("tag", "-"))
        return _respond(start_response, "200 OK", b"warned")

    if path == "/exception":
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("caught a failure tag=%s", query.get("tag", "-"))
        return _respond(start_response, "200 OK", b"caught")

    if path == "/raise":
        raise RuntimeError("telemetry_apps deliberate failure")

    if path.startswith("/raise-path"):
        raise RuntimeError("bad path " + path)

    if path == "/log-header":
        log.info("%s", environ.get("HTTP_X_EVIL", ""))
        return _respond(start_response, "200 OK", b"ok")

    if path == "/trace-id":
        body = environ["coldbrew.trace_id"].encode() if "coldbrew.trace_id" in environ else b"<absent>"
        return _respond(start_response, "200 OK", body)

    if path == "/concurrent":
        tag = query.get("tag", "-")
        log.info("concurrent tag=%s step=before", tag)
        _barrier.wait(timeout=10)
        time.sleep(0.02)
        log.info("concurrent tag=%s step=after", tag)
        return _respond(start_response, "200 OK", tag.encode())

    if path == "/status":
        code = int(query.get("code", "200"))
        start_response(f"{code} Status", [("Content-Length", "0")])
        return [b""]

    if path == "/bytes":
        return _respond(start_response, "200 OK", b"x" * int(query.get("n", "0")))

    if path == "/sleep":
        time.sleep(int(query.get("ms", "0")) / 1000)
        return _respond(start_response, "200 OK", b"slept")

    return _respond(start_response, "200 OK", b"ok")
