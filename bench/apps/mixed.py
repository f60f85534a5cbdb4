"""slow clients: `/` is the hello response, `/big` a 256 KiB body for the slow readers."""

HELLO = b"Hello, World!"
BIG = b"y" * (256 * 1024)
HELLO_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))]
BIG_HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(BIG)))]


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/big":
        start_response("200 OK", BIG_HEADERS)
        return [BIG]
    start_response("200 OK", HELLO_HEADERS)
    return [HELLO]
