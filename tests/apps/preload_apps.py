"""WSGI app and --post-fork hooks used by tests/test_preload.py.

At import, the module appends "<pid>" to the file named by PRELOAD_APPS_IMPORT_LOG (when set),
and creates ``client``, a stand-in for a database client: it remembers the pid that made it,
as a connection would belong to the process that opened it.

  app            "<worker pid> <client's pid>"
  reopen()       --post-fork hook: a new client in this process; appends "<pid>" to the file
                 named by PRELOAD_APPS_HOOK_LOG (when set)
  broken_hook()  --post-fork hook that raises
"""

import os


def _append(variable, line):
    path = os.environ.get(variable)
    if path:
        # One write of a short line in append mode: lines from several processes do not mix.
        with open(path, "a") as f:
            f.write(f"{line}\n")


class Client:
    def __init__(self):
        self.pid = os.getpid()


_append("PRELOAD_APPS_IMPORT_LOG", os.getpid())
client = Client()


def reopen():
    global client
    client = Client()
    _append("PRELOAD_APPS_HOOK_LOG", os.getpid())


def broken_hook():
    raise RuntimeError("cannot reach the database (marker-5d1c)")


def app(environ, start_response):
    body = f"{os.getpid()} {client.pid}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
