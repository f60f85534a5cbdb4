"""WSGI app used by tests/test_timeout.py.

Every call is recorded as a line "enter <tag>" and, when the app returns, "leave <tag>" in
the file named by the CALLS_FILE environment variable (when set), so a test can see whether,
and when, the app ran for a request.

  /stuck?seconds=S&tag=T   stuck_in_here(S): sleeps S seconds (default 3), then 200 b"finished"
  /fast?tag=T              200 b"fast"
"""

import os
import time
from urllib.parse import parse_qs

CALLS_FILE = os.environ.get("CALLS_FILE")


def record(event):
    if CALLS_FILE:
        with open(CALLS_FILE, "a") as calls:
            calls.write(event + "\n")


def stuck_in_here(seconds):
    time.sleep(seconds)


def app(environ, start_response):
    query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    tag = query.get("tag", "-")
    record(f"enter {tag}")
    try:
        if environ["PATH_INFO"] == "/stuck":
            stuck_in_here(float(query.get("seconds", "3")))
            body = b"finished"
        else:
            body = b"fast"
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]
    finally:
        record(f"leave {tag}")
