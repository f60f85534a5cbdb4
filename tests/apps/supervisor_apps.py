"""Apps for the supervisor tests: each import and each request says which process did it.

Environment:
- SUPERVISOR_STATE_DIR: where import markers go (one file per importing pid);
- SUPERVISOR_IMPORT_DELAY: seconds the import takes;
- SUPERVISOR_FAIL_IMPORT: if set, the import raises (so does a file named "broken" in the
  state dir, for reloads);
- SUPERVISOR_CRASH_AFTER: if set, the process exits this many seconds after the import.
"""

import os
import threading
import time

STATE_DIR = os.environ.get("SUPERVISOR_STATE_DIR")

time.sleep(float(os.environ.get("SUPERVISOR_IMPORT_DELAY", "0")))
if os.environ.get("SUPERVISOR_FAIL_IMPORT"):
    raise RuntimeError("this app refuses to load")

VERSION = "none"
if STATE_DIR and os.path.exists(os.path.join(STATE_DIR, "broken")):
    raise RuntimeError("this version of the app is broken")
if STATE_DIR:
    version_file = os.path.join(STATE_DIR, "version")
    if os.path.exists(version_file):
        with open(version_file) as f:
            VERSION = f.read().strip()
    with open(os.path.join(STATE_DIR, f"imported.{os.getpid()}"), "w") as f:
        f.write(VERSION)

if os.environ.get("SUPERVISOR_CRASH_AFTER"):
    delay = float(os.environ["SUPERVISOR_CRASH_AFTER"])
    threading.Thread(target=lambda: (time.sleep(delay), os._exit(17)), daemon=True).start()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "1"))
    body = f"{os.getpid()} {VERSION}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
