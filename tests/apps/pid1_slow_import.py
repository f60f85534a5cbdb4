"""A WSGI app whose import takes 3 seconds (tests/test_pid1.py, a signal during --preload).

Creates <PID1_APPS_STATE_DIR>/import.started when the import begins, so that a test can send
a signal while the import is under way.
"""

import os
import time

with open(os.path.join(os.environ["PID1_APPS_STATE_DIR"], "import.started"), "w") as f:
    f.write(str(os.getpid()))
time.sleep(3.0)


def app(environ, start_response):
    body = b"ready"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
