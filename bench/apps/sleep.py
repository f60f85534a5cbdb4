"""blocking I/O: every request waits 10 ms (as a database call would), then answers."""

import time

DELAY = 0.010
BODY = b"slept 10 ms"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    time.sleep(DELAY)
    start_response("200 OK", HEADERS)
    return [BODY]
