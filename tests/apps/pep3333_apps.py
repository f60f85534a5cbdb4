"""WSGI apps for the PEP 3333 conformance tests (tests/test_wsgi_*.py).

Two kinds of entry point:

* ``echo_environ`` / ``echo_environ_validated``: answer every path with a JSON dump of the
  environ, so PATH_INFO, SCRIPT_NAME, headers... can be checked for any request line.
* ``app``: a router over ``PATH_INFO`` for everything else. It keeps module-level state
  (close() counts, files handed to wsgi.file_wrapper) that later requests can query, which is
  deterministic when the server runs with ``--threads 1``: the query is only served once the
  request before it has completely finished on the single Python thread.

Apps that check the server from the app side are wrapped in ``wsgiref.validate.validator``;
apps that deliberately misbehave (bad status, bad headers, str chunks...) are not, since the
validator would reject them itself and hide what the server does.
"""

import hashlib
import io
import json
import sys
import threading
from urllib.parse import parse_qs
from wsgiref.validate import validator

TEXT = [("Content-Type", "text/plain")]
JSON = [("Content-Type", "application/json")]

_lock = threading.Lock()
CLOSE_COUNTS = {}  # token -> number of close() calls
FILES = {}  # token -> the file-like object given to wsgi.file_wrapper


def _query(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()}


def _json_response(start_response, obj, status="200 OK"):
    body = json.dumps(obj).encode("ascii")
    start_response(status, JSON + [("Content-Length", str(len(body)))])
    return [body]


# --------------------------------------------------------------------------------------------
# environ


def _describe_environ(environ):
    plain = {}
    types = {}
    reprs = {}
    for key, value in environ.items():
        types[key] = type(value).__name__
        if type(value) is str:
            plain[key] = value
        else:
            reprs[key] = repr(value)
    inp = environ.get("wsgi.input")
    err = environ.get("wsgi.errors")
    checks = {
        "input_methods": all(callable(getattr(inp, m, None)) for m in ("read", "readline", "readlines", "__iter__")),
        "errors_methods": all(callable(getattr(err, m, None)) for m in ("write", "writelines", "flush")),
        "file_wrapper_callable": callable(environ.get("wsgi.file_wrapper")),
        "version_is_tuple": type(environ.get("wsgi.version")) is tuple,
        "environ_is_dict": type(environ) is dict,
    }
    for key in ("wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once", "wsgi.input_terminated"):
        if key in environ:
            checks[key] = environ[key] if type(environ[key]) is bool else "not-a-bool:" + repr(environ[key])
    return {"environ": plain, "types": types, "repr": reprs, "checks": checks}


def _echo_environ(environ, start_response):
    body = json.dumps(_describe_environ(environ)).encode("ascii")
    start_response(
        "200 OK",
        JSON + [("Content-Length", str(len(body))), ("X-Request-Method", environ["REQUEST_METHOD"])],
    )
    return [body]


echo_environ = _echo_environ
echo_environ_validated = validator(_echo_environ)


def errors_app(environ, start_response):
    """Writes the markers from the query string to wsgi.errors."""
    q = _query(environ)
    errors = environ["wsgi.errors"]
    errors.write(q["marker"] + "\n")
    errors.writelines([q["marker2"] + "\n"])
    errors.flush()
    start_response("200 OK", TEXT)
    return [b"written"]


# --------------------------------------------------------------------------------------------
# wsgi.input


def _encode_result(value):
    if type(value) is bytes:
        return value.decode("latin-1")
    if type(value) is list:
        return [_encode_result(v) for v in value]
    return "TYPE:" + type(value).__name__


def input_ops(environ, start_response):
    """Runs ?ops=op[:arg],... on wsgi.input; answers the results as latin-1 strings.

    ops: read, readline, readlines (arg: int or None), iter (list(iter(input))).
    """
    inp = environ["wsgi.input"]
    results = []
    for op in _query(environ).get("ops", "").split(","):
        name, _, arg = op.partition(":")
        args = () if not arg else (None if arg == "None" else int(arg),)
        if name == "iter":
            results.append(_encode_result(list(iter(inp))))
        else:
            results.append(_encode_result(getattr(inp, name)(*args)))
    return _json_response(start_response, results)


def input_sha256(environ, start_response):
    """Reads wsgi.input with read(65536) until b'' (wsgi.input_terminated style)."""
    inp = environ["wsgi.input"]
    digest = hashlib.sha256()
    size = 0
    max_chunk = 0
    reads = 0
    while True:
        chunk = inp.read(65536)
        assert type(chunk) is bytes
        reads += 1
        if not chunk:
            break
        max_chunk = max(max_chunk, len(chunk))
        size += len(chunk)
        digest.update(chunk)
    return _json_response(start_response, {"size": size, "sha256": digest.hexdigest(), "max_chunk": max_chunk, "reads": reads})


def input_sha256_cl(environ, start_response):
    """Reads exactly CONTENT_LENGTH bytes with read(n), the classic (pre input_terminated) way."""
    inp = environ["wsgi.input"]
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    digest = hashlib.sha256()
    size = 0
    while remaining:
        chunk = inp.read(min(remaining, 65536))
        if not chunk:
            break
        size += len(chunk)
        remaining -= len(chunk)
        digest.update(chunk)
    return _json_response(start_response, {"size": size, "sha256": digest.hexdigest()})


def input_lines(environ, start_response):
    """Reads wsgi.input line by line: by iteration, or with readline(size) when ?size= is given.

    Counts as "bad" every piece that is not bytes or empty, and every piece (but the last) that
    neither ends with a newline nor is exactly `size` bytes long; no piece may exceed `size`.
    """
    q = _query(environ)
    limit = int(q["size"]) if "size" in q else None
    inp = environ["wsgi.input"]
    if limit is None:
        pieces = iter(inp)
    else:
        pieces = iter(lambda: inp.readline(limit), b"")
    digest = hashlib.sha256()
    count = 0
    size = 0
    bad = 0
    previous = None
    for line in pieces:
        if previous is not None and not previous.endswith(b"\n") and len(previous) != limit:
            bad += 1
        if type(line) is not bytes or not line or (limit is not None and len(line) > limit):
            bad += 1
        previous = line
        count += 1
        size += len(line)
        digest.update(line)
    return _json_response(start_response, {"size": size, "sha256": digest.hexdigest(), "lines": count, "bad": bad})


# --------------------------------------------------------------------------------------------
# start_response


BAD_START = {
    "status-bytes": (b"200 OK", TEXT),
    "status-int": (200, TEXT),
    "status-nocode": ("OK", TEXT),
    "status-badcode": ("2x0 OK", TEXT),
    "headers-tuple": ("200 OK", (("Content-Type", "text/plain"),)),
    "headers-dict": ("200 OK", {"Content-Type": "text/plain"}),
    "header-value-int": ("200 OK", TEXT + [("X-Number", 1)]),
    "header-value-bytes": ("200 OK", TEXT + [("X-Bytes", b"1")]),
    "header-name-bytes": ("200 OK", TEXT + [(b"X-Bytes", "1")]),
    "header-not-pair": ("200 OK", TEXT + [("X-One", "1", "extra")]),
    "status-crlf": ("200 OK\r\nX-Injected: 1", TEXT),
    "status-lf": ("200 OK\nX-Injected: 1", TEXT),
    "status-cr": ("200 OK\rX-Injected: 1", TEXT),
    "status-nul": ("200 OK\x00X-Injected: 1", TEXT),
    "name-crlf": ("200 OK", TEXT + [("X-Foo\r\nX-Injected", "1")]),
    "name-lf": ("200 OK", TEXT + [("X-Foo\nX-Injected", "1")]),
    "name-nul": ("200 OK", TEXT + [("X-Foo\x00X-Injected", "1")]),
    "value-crlf": ("200 OK", TEXT + [("X-Foo", "a\r\nX-Injected: 1")]),
    "value-lf": ("200 OK", TEXT + [("X-Foo", "a\nX-Injected: 1")]),
    "value-cr": ("200 OK", TEXT + [("X-Foo", "a\rX-Injected: 1")]),
    "value-nul": ("200 OK", TEXT + [("X-Foo", "a\x00X-Injected: 1")]),
    "value-nonlatin1": ("200 OK", TEXT + [("X-Foo", "caf\u20ac")]),
    "name-nonlatin1": ("200 OK", TEXT + [("X-F\u20acoo", "1")]),
}


def bad_start(environ, start_response):
    """/bad-start/<case>: start_response with invalid arguments; errors are not caught."""
    case = environ["PATH_INFO"].rsplit("/", 1)[-1]
    status, headers = BAD_START[case]
    start_response(status, headers)
    return [b"should-not-be-sent"]


def latin1_header(environ, start_response):
    """A header value with a latin-1 (non-ASCII) character, which PEP 3333 allows."""
    start_response("200 OK", TEXT + [("X-Latin", "caf\xe9")])
    return [b"ok"]


def custom_reason(environ, start_response):
    start_response("299 Custom Reason Here", TEXT)
    return [b"ok"]


def write_interleave(environ, start_response):
    write = start_response("200 OK", TEXT)
    write(b"a")
    write(b"b")
    return [b"c", b"d"]


def write_then_generator(environ, start_response):
    write = start_response("200 OK", TEXT)
    write(b"a")
    write(b"b")

    def rest():
        yield b"c"
        yield b"d"

    return rest()


def exc_info_before(environ, start_response):
    """Replaces status and headers with exc_info before any body is sent (list body)."""
    start_response("200 OK", TEXT + [("X-Old", "1")])
    try:
        raise ValueError("handled before the body")
    except ValueError:
        start_response("500 Internal Server Error", TEXT + [("X-New", "1")], sys.exc_info())
    return [b"error page"]


def exc_info_before_generator(environ, start_response):
    """Same, but the replacement happens inside the first iteration of a generator."""
    start_response("200 OK", TEXT + [("X-Old", "1")])

    def body():
        try:
            raise ValueError("handled before the body")
        except ValueError:
            start_response("503 Service Unavailable", TEXT + [("X-New", "1")], sys.exc_info())
        yield b"error page"

    return body()


def exc_info_after(environ, start_response):
    """Calls start_response(..., exc_info) after the head and a first chunk went out."""
    start_response("200 OK", TEXT)

    def body():
        yield b"first-part"
        try:
            raise ValueError("late-failure-marker")
        except ValueError:
            # Must raise: the headers are already sent.
            start_response("500 Internal Server Error", TEXT, sys.exc_info())
        yield b"never-sent"

    return body()


def twice(environ, start_response):
    """start_response twice without exc_info: the second call must raise."""
    start_response("200 OK", TEXT)
    start_response("201 Created", TEXT)
    return [b"twice"]


def lazy(environ, start_response):
    """start_response is called inside the first iteration."""

    def body():
        start_response("201 Created", TEXT + [("X-Lazy", "yes")])
        yield b"lazy body"

    return body()


# --------------------------------------------------------------------------------------------
# iterables


class OnlyIter:
    """An iterable that is not a list, tuple or generator, and has no close()."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)


class Tracked:
    """An iterator counting its close() calls in CLOSE_COUNTS[token].

    mode: normal (yields `items`), raise-first (raises at the first next()),
    raise-later (yields a chunk then raises), forever (yields `chunk` bytes forever).
    """

    def __init__(self, token, mode, chunk=65536):
        self.token = token
        self.mode = mode
        self.chunk = b"x" * chunk
        self.sent = 0
        with _lock:
            CLOSE_COUNTS.setdefault(token, 0)

    def __iter__(self):
        return self

    def __next__(self):
        self.sent += 1
        if self.mode == "normal":
            if self.sent > 3:
                raise StopIteration
            return b"part%d;" % self.sent
        if self.mode == "raise-first":
            raise RuntimeError("tracked-raise-first")
        if self.mode == "raise-later":
            if self.sent == 1:
                return b"before-the-error"
            raise RuntimeError("tracked-raise-later")
        if self.mode == "forever":
            return self.chunk
        raise AssertionError(self.mode)

    def close(self):
        with _lock:
            CLOSE_COUNTS[self.token] += 1


class TrackedList(list):
    """A list subclass with close(): not the exact list type, but still a list of bytes."""

    def __init__(self, token, items):
        super().__init__(items)
        self.token = token
        with _lock:
            CLOSE_COUNTS.setdefault(token, 0)

    def close(self):
        with _lock:
            CLOSE_COUNTS[self.token] += 1


def iterable_kinds(environ, start_response):
    """/iter/<kind>: the same body b'hello world' from different iterable types."""
    kind = environ["PATH_INFO"].rsplit("/", 1)[-1]
    items = [b"hello", b" ", b"world"]
    start_response("200 OK", TEXT)
    if kind == "list":
        return list(items)
    if kind == "tuple":
        return tuple(items)
    if kind == "generator":
        return (item for item in items)
    if kind == "custom":
        return OnlyIter(items)
    if kind == "iterator":
        return iter(items)
    if kind == "empty-chunks":
        return [b"", b"hello", b"", b" ", b"world", b""]
    if kind == "empty-chunks-generator":
        return (item for item in [b"", b"hello", b"", b" ", b"world", b""])
    if kind == "bytes-subclass":

        class B(bytes):
            pass

        return [B(item) for item in items]
    raise AssertionError(kind)


def tracked(environ, start_response):
    q = _query(environ)
    start_response("200 OK", TEXT)
    if q["mode"] == "list":
        return TrackedList(q["token"], [b"part1;", b"part2;", b"part3;"])
    return Tracked(q["token"], q["mode"], int(q.get("chunk", 65536)))


def closed_count(environ, start_response):
    token = _query(environ)["token"]
    with _lock:
        count = CLOSE_COUNTS.get(token)
    return _json_response(start_response, {"count": count})


def str_chunk(environ, start_response):
    """/str-chunk/<kind>: the body contains a str instead of bytes."""
    kind = environ["PATH_INFO"].rsplit("/", 1)[-1]
    write = start_response("200 OK", TEXT)
    if kind == "list":
        return ["text"]
    if kind == "generator":
        return (item for item in ["text"])
    if kind == "write":
        write("text")
        return [b"after-write"]
    raise AssertionError(kind)


def raise_before(environ, start_response):
    raise RuntimeError("secret-detail-before-start-response")


def raise_after_headers(environ, start_response):
    start_response("200 OK", TEXT)

    def body():
        yield b"partial-data"
        raise RuntimeError("boom-after-headers-marker")

    return body()


def chunked_generator(environ, start_response):
    start_response("200 OK", TEXT)

    def body():
        yield b"chunk-one;"
        yield b"chunk-two;"
        yield b"chunk-three"

    return body()


def generator_with_length(environ, start_response):
    start_response("200 OK", TEXT + [("Content-Length", "10")])

    def body():
        yield b"01234"
        yield b"56789"

    return body()


def generator_too_long(environ, start_response):
    """Yields more than its Content-Length: the server must not send the excess."""
    start_response("200 OK", TEXT + [("Content-Length", "10")])

    def body():
        yield b"01234"
        yield b"56789"
        yield b"EXTRA-BYTES"

    return body()


def generator_too_short(environ, start_response):
    """Yields less than its Content-Length: the server must close the connection."""
    start_response("200 OK", TEXT + [("Content-Length", "10")])

    def body():
        yield b"01234"

    return body()


def write_too_long(environ, start_response):
    write = start_response("200 OK", TEXT + [("Content-Length", "10")])
    write(b"0123456789")
    try:
        write(b"EXTRA-BYTES")
    except Exception:
        pass
    return []


def list_body(environ, start_response):
    start_response("200 OK", TEXT)
    return [b"list-", b"body"]


def tuple_body(environ, start_response):
    start_response("200 OK", TEXT)
    return (b"tuple-", b"body")


def ok(environ, start_response):
    start_response("200 OK", TEXT)
    return [b"ok"]


# --------------------------------------------------------------------------------------------
# wsgi.file_wrapper


def deterministic_bytes(size):
    """The same pseudo-random bytes on both sides of the test."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d" % counter).digest()
        counter += 1
    return bytes(out[:size])


def file_app(environ, start_response):
    """?path=&token=[&seek=N][&read=N][&blksize=N]: a real file through wsgi.file_wrapper."""
    q = _query(environ)
    f = open(q["path"], "rb")
    if "seek" in q:
        f.seek(int(q["seek"]))
    if "read" in q:
        f.read(int(q["read"]))  # Python's buffer reads ahead; the position is what counts
    with _lock:
        FILES[q["token"]] = f
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    wrapper = environ["wsgi.file_wrapper"]
    if "blksize" in q:
        return wrapper(f, int(q["blksize"]))
    return wrapper(f)


def file_after_write(environ, start_response):
    """write() first, then a real file through wsgi.file_wrapper: both must arrive, in order."""
    q = _query(environ)
    f = open(q["path"], "rb")
    with _lock:
        FILES[q["token"]] = f
    write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
    write(b"written-first;")
    return environ["wsgi.file_wrapper"](f)


def file_with_length(environ, start_response):
    """A real file with an app Content-Length smaller than the file: only that many bytes."""
    q = _query(environ)
    f = open(q["path"], "rb")
    with _lock:
        FILES[q["token"]] = f
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", q["cl"])])
    return environ["wsgi.file_wrapper"](f)


def bytesio_app(environ, start_response):
    """?size=&token=: a BytesIO (no fileno) through wsgi.file_wrapper with a block size."""
    q = _query(environ)
    buf = io.BytesIO(deterministic_bytes(int(q["size"])))
    with _lock:
        FILES[q["token"]] = buf
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return environ["wsgi.file_wrapper"](buf, 4096)


def file_state(environ, start_response):
    token = _query(environ)["token"]
    with _lock:
        f = FILES.get(token)
    state = "missing" if f is None else ("closed" if f.closed else "open")
    return _json_response(start_response, {"state": state})


# --------------------------------------------------------------------------------------------
# the router

ROUTES = {
    "/errors": errors_app,
    "/input/ops": input_ops,
    "/input/ops-validated": validator(input_ops),
    "/input/sha256": validator(input_sha256),
    "/input/sha256-cl": validator(input_sha256_cl),
    "/input/lines": input_lines,
    "/latin1-header": validator(latin1_header),
    "/custom-reason": validator(custom_reason),
    "/write-interleave": validator(write_interleave),
    "/write-then-generator": validator(write_then_generator),
    "/exc-info-before": validator(exc_info_before),
    "/exc-info-before-generator": validator(exc_info_before_generator),
    "/exc-info-after": validator(exc_info_after),
    "/twice": twice,
    "/lazy": lazy,
    "/lazy-validated": validator(lazy),
    "/tracked": tracked,
    "/tracked-validated": validator(tracked),
    "/closed-count": closed_count,
    "/raise-before": raise_before,
    "/raise-after-headers": raise_after_headers,
    "/chunked-generator": validator(chunked_generator),
    "/generator-with-length": validator(generator_with_length),
    "/generator-too-long": generator_too_long,
    "/generator-too-short": generator_too_short,
    "/write-too-long": write_too_long,
    # Not validated: the validator wraps the result, hiding that it is a list or tuple.
    "/list-body": list_body,
    "/tuple-body": tuple_body,
    "/ok": validator(ok),
    "/file": file_app,
    "/file-validated": validator(file_app),
    "/file-after-write": file_after_write,
    "/file-with-length": file_with_length,
    "/bytesio": bytesio_app,
    "/file-state": file_state,
}

PREFIX_ROUTES = {
    "/bad-start/": bad_start,
    "/iter/": iterable_kinds,
    "/iter-validated/": validator(iterable_kinds),
    "/str-chunk/": str_chunk,
}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    handler = ROUTES.get(path)
    if handler is None:
        for prefix, candidate in PREFIX_ROUTES.items():
            if path.startswith(prefix):
                handler = candidate
                break
    if handler is None:
        start_response("404 Not Found", TEXT)
        return [b"no such route: " + path.encode("latin-1")]
    return handler(environ, start_response)
