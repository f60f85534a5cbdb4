"""WSGI apps and non-apps used by tests/test_cli.py to exercise app loading."""

import os

# Read at import time, so a test can check that `-e` is applied before import.
MARKER_AT_IMPORT = os.environ.get("COLDBREW_TEST_MARKER")


def _make_app(body):
    def wsgi_app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return wsgi_app


# With no ":ATTR", `application` is preferred over `app`.
application = _make_app(b"application")
app = _make_app(b"app")

not_callable = 42


class _Holder:
    wsgi = staticmethod(_make_app(b"dotted"))


holder = _Holder()


def create_app(name, debug=False):
    """An app factory taking literal arguments."""
    wsgi_app = _make_app(f"{name} debug={debug}".encode())
    wsgi_app.factory_args = (name, debug)
    return wsgi_app


def broken_factory():
    raise ValueError("factory failed on purpose")


def returns_none():
    return None


async def asgi_app(scope, receive, send):
    pass


class _AsgiApp:
    """What Starlette, FastAPI and Django's ASGIHandler look like: an object whose __call__ is async."""

    async def __call__(self, scope, receive, send):
        pass


asgi_instance = _AsgiApp()
