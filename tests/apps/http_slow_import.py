"""A WSGI app whose import takes 2 seconds (tests/test_lifecycle.py, readiness).

Writes wall-clock timestamps of the start and end of the import to stderr so the
test can compare them with when the port first accepted a connection.
"""

import sys
import time

print(f"http_slow_import: import started at {time.time():.6f}", file=sys.stderr, flush=True)
time.sleep(2.0)
print(f"http_slow_import: import finished at {time.time():.6f}", file=sys.stderr, flush=True)


def app(environ, start_response):
    body = b"ready"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
