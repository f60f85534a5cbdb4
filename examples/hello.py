"""The smallest WSGI application: `coldbrew --chdir examples hello:app`."""

BODY = b"Hello, World!"
HEADERS = [
    ("Content-Type", "text/plain; charset=utf-8"),
    ("Content-Length", str(len(BODY))),
]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
