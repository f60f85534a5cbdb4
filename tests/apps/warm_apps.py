"""An app with warm-up functions that leave a trace of when and where they ran."""

import os
import time

STATE_DIR = os.environ["WARM_STATE_DIR"]


def _mark(name):
    with open(os.path.join(STATE_DIR, f"{name}.{os.getpid()}"), "a") as f:
        f.write(f"{time.time()}\n")


def _warm(name):
    _mark(f"{name}.start")
    time.sleep(1.0)
    _mark(f"{name}.end")


def cache():
    _warm("cache")


def connections():
    _warm("connections")


def broken():
    raise RuntimeError("the cache server is unreachable")


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"warm"]
