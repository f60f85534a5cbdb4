"""Bad input, by the categories of shared/notes/bad-input.md, against a real coldbrew server.

The rule for all of it: a 4xx (or 5xx where noted), the connection closed, the app never
called with a misread request, one log line that says what was wrong. The app is
tests/apps/conformance_apps.py, which counts its calls.

Covered elsewhere, not repeated here:
- gunicorn's corpus of valid and invalid requests: test_conformance.py;
- `_` in header names never aliasing `-`: test_wsgi_environ.py (this file adds
  Content_Type and Content_Length, which have environ keys of their own);
- pipelined requests answered in order, 100-continue only once the app reads: test_http1.py;
- CR, LF or NUL in the app's status or headers answered 500, never a split response:
  test_wsgi_response.py (test_start_response_rejects_control_characters); no body on HEAD,
  204 and 304: test_http1.py; an app raising after the head went out aborts the connection:
  test_wsgi_response.py;
- escaped paths and headers in the access log and the app's log lines: test_telemetry.py.
"""

import base64
import json
import socket
import threading
import time

import pytest

import conftest

from conftest import Server
from test_http1 import RawConn

APP = "conformance_apps:app"

# No headers, so it fits the tightest limits; HTTP/1.0, so the server closes after it.
COUNTER = b"GET /__calls HTTP/1.0\r\n\r\n"


@pytest.fixture(scope="module")
def server():
    server = Server(APP, "--threads", "2").wait_ready()
    yield server
    server.stop()


def calls(server):
    """How many times the app has been called so far."""
    return conftest.echo_app_calls(server)


def responses(server, raw, eof=False):
    """Sends `raw` on a fresh connection and reads responses until the server closes it.

    `eof`: the client then ends its side, saying nothing more comes. A test that expects the
    connection to stay open ends `raw` with COUNTER, after which the server closes. The bytes
    are sent from another thread while the answers are read: a server that answers and closes
    before reading everything must not leave the client stuck in a send."""
    with RawConn.open(server) as conn:

        def send():
            try:
                conn.sock.sendall(raw)
                if eof:
                    conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # closed by the server after its answer: what it answered is checked

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        out = []
        while True:
            try:
                out.append(conn.read_response())
            except (EOFError, ConnectionResetError):
                break
        sender.join(10)
        assert conn.buf == b"", f"a truncated response: {conn.buf[:200]!r}"
        return out


def wait_for_calls(server, count, timeout=10.0):
    """Waits until the app has been called `count` times (a condition, not a duration)."""
    deadline = time.monotonic() + timeout
    while calls(server) != count:
        assert time.monotonic() < deadline, f"the app was not called {count} times"
        time.sleep(0.01)


def refused(server, raw, status, eof=False):
    """Asserts that `raw` gets exactly one answer, `status`, then the connection closes, and
    the app is not called. Returns the answer."""
    before = calls(server)
    got = responses(server, raw, eof)
    assert [r.status for r in got] == [status], got
    assert calls(server) == before, "the app was called"
    return got[0]


def echoed(resp):
    assert resp.status == 200, resp
    seen = json.loads(resp.body)
    if "body_b64" in seen:
        seen["body"] = base64.b64decode(seen.pop("body_b64"))
    return seen


def request(target="/", headers=(), body=b"", method="GET", version="HTTP/1.1", host=True):
    lines = [f"{method} {target} {version}".encode("latin-1")]
    if host:
        lines.append(b"Host: example.com")
    lines += [h.encode("latin-1") if isinstance(h, str) else h for h in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(*chunks, trailer=b""):
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n" + trailer + b"\r\n"


# ---------------------------------------------------------------------------------------------
# Message framing


def test_content_length_with_transfer_encoding_is_refused(server):
    # A front end that framed this by Content-Length would forward the rest as a request of its
    # own; coldbrew refuses the request and closes, so nothing after it is ever a request.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = request("/first", ["Content-Length: 40", "Transfer-Encoding: chunked"], b"0\r\n\r\n" + smuggled, method="POST")
    resp = refused(server, raw, 400)
    assert resp.header("connection") == "close"


@pytest.mark.parametrize(
    "value",
    [b"0x3", b"", b"3_0", b"1e3", b"99999999999999999999", b"3, 4", b"3 3", b"\xd9\xa3", b"3\x00"],
    ids=["hex", "empty", "underscore", "exponent", "overflow", "list", "two-numbers", "arabic-digit", "nul"],
)
def test_invalid_content_length(server, value):
    refused(server, request("/", [b"Content-Length: " + value], b"abc", method="POST"), 400)


@pytest.mark.parametrize(
    "lines, status",
    [
        ([b"chunked, chunked"], 400),
        ([b"chunked", b"chunked"], 400),
        ([b"gzip"], 400),
        ([b"xchunked"], 400),
        ([b"\x0bchunked"], 400),
        ([b"chunked\x00"], 400),
        ([b"br, chunked"], 501),
        ([b"foo", b"chunked"], 501),
    ],
    ids=["twice-in-a-line", "twice-in-two-lines", "not-chunked", "xchunked", "vertical-tab", "nul", "unknown", "unknown-line"],
)
def test_transfer_encoding_not_exactly_a_final_chunked(server, lines, status):
    raw = request("/", [b"Transfer-Encoding: " + line for line in lines], chunked(b"abc"), method="POST")
    refused(server, raw, status)


def test_known_codings_before_chunked_reach_the_app(server):
    raw = request("/", ["Transfer-Encoding: gzip, chunked"], chunked(b"\x1f\x8b"), method="POST") + COUNTER
    got = responses(server, raw)
    seen = echoed(got[0])
    assert seen["headers"]["HTTP_TRANSFER_ENCODING"] == "gzip, chunked"
    assert seen["body"] == b"\x1f\x8b", "the body is passed on as sent, for the app to decode"
    assert len(got) == 2


def test_transfer_encoding_spelled_with_underscore_frames_nothing(server):
    raw = request("/first", ["Transfer_Encoding: chunked", "Content-Length: 3"], b"abc", method="POST")
    got = responses(server, raw + request("/next") + COUNTER)
    first, following = echoed(got[0]), echoed(got[1])
    assert first["body"] == b"abc"
    assert "HTTP_TRANSFER_ENCODING" not in first["headers"]
    assert following["path"] == "/next"
    assert len(got) == 3


@pytest.mark.parametrize(
    "body",
    [
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"3 3\r\nabc\r\n0\r\n\r\n",
        b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
        b"3\x00\r\nabc\r\n0\r\n\r\n",
        b"3;a\nb\r\nabc\r\n0\r\n\r\n",
        b"3;a\rb\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabcXY0\r\n\r\n",
        b"3\r\nabc\n0\r\n\r\n",
        b"3;" + b"e" * 100_000 + b"\r\nabc\r\n0\r\n\r\n",
    ],
    ids=["0x", "space-inside", "overflow", "nul", "bare-lf-in-extension", "bare-cr-in-extension",
         "no-crlf-after-data", "lf-after-data", "huge-extension"],
)
def test_malformed_chunks(server, body):
    resp = refused(server, request("/", ["Transfer-Encoding: chunked"], body, method="POST"), 400)
    assert resp.header("connection") == "close"
    assert b"malformed or incomplete request body" in resp.body


def test_too_many_trailer_fields(server):
    trailer = b"".join(b"T%d: v\r\n" % i for i in range(150))
    refused(server, request("/", ["Transfer-Encoding: chunked"], chunked(b"abc", trailer=trailer), method="POST"), 400)


def test_forbidden_trailer_in_a_streamed_body_fails_the_read(serve):
    # Past --request-buffer the app reads the body from the connection; the trailer is checked
    # when it arrives, and the read raises instead of ending quietly.
    server = serve(APP, "--request-buffer", "0")
    raw = request("/__catch-body-error", ["Transfer-Encoding: chunked"],
                  chunked(b"a" * 1000, b"b" * 1000, trailer=b"Host: evil.example\r\n"), method="POST")
    got = responses(server, raw + COUNTER)
    assert "host is not allowed in a chunked trailer" in echoed(got[0])["error"]


def test_no_resynchronisation_after_a_framing_error(server):
    # After a malformed chunk, the next bytes on the connection are never read as a request.
    raw = request("/", ["Transfer-Encoding: chunked"], b"3\r\nabcXY", method="POST") + request("/next")
    refused(server, raw, 400)


# ---------------------------------------------------------------------------------------------
# Header syntax


@pytest.mark.parametrize(
    "line",
    [b" X: a", b"X\x00Y: a", b"X(Y: a", b"X Y: a", b": a", b"NoColon", b"X: a\x00b", b"X: a\rb",
     b"X: a\x1bb", b"X\xa0: a", b"X\xc3\xa9: a"],
    ids=["space-before-first-header", "nul-in-name", "paren-in-name", "space-in-name", "empty-name",
         "no-colon", "nul-in-value", "cr-in-value", "esc-in-value", "nbsp-in-name", "utf8-in-name"],
)
def test_malformed_header_line(server, line):
    # The malformed line comes first, before Host: whitespace there is the "space before the
    # first header" case.
    raw = b"GET / HTTP/1.1\r\n" + line + b"\r\nHost: example.com\r\n\r\n"
    refused(server, raw, 400)


@pytest.mark.parametrize("value", [b"a b", b"user@example.com", b"example.com/x", b"a\tb"],
                         ids=["space", "userinfo", "path", "tab"])
def test_invalid_host(server, value):
    refused(server, request("/", [b"Host: " + value], host=False), 400)


def test_duplicate_host_with_the_same_value(server):
    refused(server, request("/", ["Host: example.com"]), 400)


def test_empty_host_is_accepted(server):
    got = responses(server, request("/", ["Host:"], host=False) + COUNTER)
    assert echoed(got[0])["headers"]["HTTP_HOST"] == ""


def test_content_type_and_length_spelled_with_underscores_are_dropped(server):
    raw = request("/", ["Content_Type: evil/type", "Content_Length: 1", "Content-Length: 3"], b"abc", method="POST")
    got = responses(server, raw + COUNTER)
    seen = echoed(got[0])
    assert seen["body"] == b"abc"
    assert seen["headers"]["CONTENT_LENGTH"] == "3"
    assert "CONTENT_TYPE" not in seen["headers"]
    assert "evil" not in repr(seen)


def test_high_bytes_at_the_edges_of_a_value_are_kept(server):
    got = responses(server, request("/", [b"X-A: \x85a\xa0", b"X-B: \xa0"]) + COUNTER)
    headers = echoed(got[0])["headers"]
    assert headers["HTTP_X_A"] == "\x85a\xa0"
    assert headers["HTTP_X_B"] == "\xa0"


# ---------------------------------------------------------------------------------------------
# Request line


@pytest.mark.parametrize(
    "line",
    [b"GET / HTTP/1.2", b"GET / HTTP/3", b"GET / http/1.1", b"GET  HTTP/1.1", b"GET\t/\tHTTP/1.1",
     b"GET /a b HTTP/1.1", b"GET / HTTP/1.1 x", b"G\x1bT / HTTP/1.1", b"GET /\x7f HTTP/1.1", b"/ HTTP/1.1"],
    ids=["http-1.2", "http-3", "lower-case-version", "empty-target", "tabs", "space-in-target",
         "extra-word", "esc-in-method", "del-in-target", "no-method"],
)
def test_malformed_request_line(server, line):
    refused(server, line + b"\r\nHost: example.com\r\n\r\n", 400)


def test_connect_is_not_implemented(server):
    resp = refused(server, request("example.com:443", method="CONNECT"), 501)
    assert b"CONNECT is not supported" in resp.body


def test_asterisk_only_with_options(server):
    refused(server, request("*", method="DELETE"), 400)
    got = responses(server, request("*", method="OPTIONS") + COUNTER)
    assert echoed(got[0])["path"] == "*"


def test_connection_ended_inside_the_head_gets_400(server):
    resp = refused(server, b"GET /x HTTP/1.1\r\nHost: exa", 400, eof=True)
    assert resp.header("connection") == "close"
    assert resp.header("date") is not None
    assert resp.body == b"Bad Request: the connection ended inside the request head\n"


# ---------------------------------------------------------------------------------------------
# Connection handling


def test_get_body_is_read_as_a_body_never_as_a_request(server):
    smuggled = b"GET /smuggled HTTP/1.1\r\n\r\n"
    raw = request("/a", [f"Content-Length: {len(smuggled)}"], smuggled) + request("/b") + COUNTER
    before = calls(server)
    got = responses(server, raw)
    first, second = echoed(got[0]), echoed(got[1])
    assert first["path"] == "/a" and first["body"] == smuggled
    assert second["path"] == "/b"
    assert json.loads(got[2].body)["calls"] == before + 2


@pytest.mark.parametrize("size", [26, 600_000], ids=["read-ahead", "streamed"])
def test_get_body_the_app_ignores_is_never_a_request(server, size):
    smuggled = b"GET /smuggled HTTP/1.1\r\n\r\n"
    body = (smuggled * (size // len(smuggled) + 1))[:size]
    raw = request("/__ignore-body", [f"Content-Length: {size}"], body) + request("/after") + COUNTER
    before = calls(server)
    got = responses(server, raw)
    assert got and json.loads(got[0].body) == {"ignored": True}
    # Either the server read past the ignored body and answered what follows, or it closed the
    # connection after the first answer; never a request made of the body.
    paths = [echoed(r).get("path") for r in got[1:2]]
    assert paths in ([], ["/after"])
    assert calls(server) == before + 1 + len(paths)


def test_nothing_after_connection_close_is_processed(server):
    raw = request("/a", ["Connection: close", "Content-Length: 3"], b"abc", method="POST") + request("/b")
    before = calls(server)
    got = responses(server, raw)
    assert [echoed(r)["path"] for r in got] == ["/a"]
    assert calls(server) == before + 1


def test_unknown_expectation_gets_417(server):
    resp = refused(server, request("/", ["Expect: 200-ok", "Content-Length: 3"], b"abc", method="POST"), 417)
    assert resp.header("connection") == "close"


def test_expect_is_ignored_on_http10(server):
    raw = request("/", ["Expect: 200-ok", "Content-Length: 3"], b"abc", method="POST", version="HTTP/1.0")
    got = responses(server, raw)
    assert echoed(got[0])["body"] == b"abc"


# ---------------------------------------------------------------------------------------------
# Limits: --limit-request-line, --limit-request-fields, --limit-request-field-size,
# --limit-request-body


# What follows a request line of line_of's: the Host an HTTP/1.1 request must have.
HOST_END = b"\r\nHost: example.com\r\n\r\n"


def line_of(length):
    """A request line of exactly `length` bytes (CRLF not counted)."""
    fixed = len("GET / HTTP/1.1")
    return b"GET /" + b"a" * (length - fixed) + b" HTTP/1.1"


def test_request_line_limit_default(server):
    got = responses(server, line_of(4094) + HOST_END + COUNTER)
    assert got[0].status == 200
    resp = refused(server, line_of(4095) + HOST_END, 414)
    assert resp.body == b"URI Too Long: the request line is longer than 4094 bytes\n"
    assert resp.header("connection") == "close"


def test_request_line_limit_option(serve):
    server = serve(APP, "--limit-request-line", "100")
    assert responses(server, line_of(100) + HOST_END + COUNTER)[0].status == 200
    refused(server, line_of(101) + HOST_END, 414)

    unlimited = serve(APP, "--limit-request-line", "0")
    assert responses(unlimited, line_of(60_000) + HOST_END + COUNTER)[0].status == 200
    # Past 65534 bytes hyper refuses the URI itself.
    refused(unlimited, line_of(70_000) + HOST_END, 414)


def fields(count):
    return [f"X-F{i}: {i}" for i in range(count)]


def test_field_count_limit_default(server):
    # Host is one of the 100.
    assert responses(server, request("/", fields(99)) + COUNTER)[0].status == 200
    refused(server, request("/", fields(100)), 431)


@pytest.mark.parametrize("limit", [5, 300])
def test_field_count_limit_option(serve, limit):
    server = serve(APP, "--limit-request-fields", str(limit))
    got = responses(server, request("/", fields(limit - 1)) + COUNTER)
    assert len(echoed(got[0])["headers"]) == limit
    refused(server, request("/", fields(limit)), 431)


def test_field_size_limit_default(server):
    # "X-Long: " + value + CRLF: 8 + len(value) + 2 bytes.
    assert responses(server, request("/", ["X-Long: " + "v" * 8180]) + COUNTER)[0].status == 200
    resp = refused(server, request("/", ["X-Long: " + "v" * 8181]), 431)
    assert resp.body == b"Request Header Fields Too Large: a header field is longer than 8190 bytes\n"


def test_field_size_limit_option(serve):
    server = serve(APP, "--limit-request-field-size", "100")
    assert responses(server, request("/", ["X: " + "v" * 95]) + COUNTER)[0].status == 200
    refused(server, request("/", ["X: " + "v" * 96]), 431)

    unlimited = serve(APP, "--limit-request-field-size", "0")
    got = responses(unlimited, request("/", ["X: " + "v" * 100_000]) + COUNTER)
    assert len(echoed(got[0])["headers"]["HTTP_X"]) == 100_000
    # The whole head is still capped at 400 KiB.
    assert responses(unlimited, request("/", ["X: " + "v" * 400_000]) + COUNTER)[0].status == 200
    refused(unlimited, request("/", ["X: " + "v" * 410_000]), 431)


def test_body_limit_on_content_length(serve):
    server = serve(APP, "--limit-request-body", "1000")
    got = responses(server, request("/", ["Content-Length: 1000"], b"b" * 1000, method="POST") + COUNTER)
    assert echoed(got[0])["body"] == b"b" * 1000
    # Refused from the head alone: the client need not send the body.
    resp = refused(server, request("/", ["Content-Length: 1001"], method="POST"), 413)
    assert resp.body == b"Payload Too Large: the request body is larger than this server accepts (1000 bytes)\n"
    assert resp.header("connection") == "close"


def test_body_limit_answers_before_100_continue(serve):
    server = serve(APP, "--limit-request-body", "1000")
    with RawConn.open(server) as conn:
        conn.send(request("/", ["Content-Length: 1001", "Expect: 100-continue"], method="POST"))
        assert conn.read_response().status == 413, "413 comes first, with no 100 Continue before it"


def test_body_limit_default_is_32_mib(server):
    refused(server, request("/", [f"Content-Length: {32 * 1024 * 1024 + 1}"], method="POST"), 413)
    with RawConn.open(server) as conn:
        conn.send(request("/", [f"Content-Length: {32 * 1024 * 1024}", "Expect: 100-continue"], method="POST"))
        assert conn.read_response().status == 100


def test_body_limit_zero_is_no_limit(serve):
    server = serve(APP, "--limit-request-body", "0")
    with RawConn.open(server) as conn:
        conn.send(request("/", [f"Content-Length: {10 * 1024**3}", "Expect: 100-continue"], method="POST"))
        assert conn.read_response().status == 100


def test_chunked_body_over_the_limit_before_the_app_runs(serve):
    # The body limit is under --request-buffer: the whole body would be read ahead, so it is
    # refused before the app is called. (The chunk's CRLF is not sent: the server has read
    # every byte sent when it answers, so the close is clean.)
    server = serve(APP, "--limit-request-body", "1000")
    refused(server, request("/", ["Transfer-Encoding: chunked"], b"3e9\r\n" + b"c" * 1001, method="POST"), 413)


@pytest.mark.parametrize("path", ["/", "/__catch-body-error"])
def test_chunked_body_over_the_limit_while_the_app_reads(serve, path):
    # Past --request-buffer (0 here: only what has arrived is read ahead) the app streams the
    # body, and going over the limit fails its read. An app that lets the error out gets the
    # client a 413 instead of a 500; one that catches it answers what it likes. Either way the
    # rest of the body is not read and the connection closes.
    server = serve(APP, "--limit-request-body", "100000", "--request-buffer", "0")
    before = calls(server)
    with RawConn.open(server) as conn:
        conn.send(request(path, ["Transfer-Encoding: chunked"], b"186a1\r\n" + b"c" * 1000, method="POST"))
        wait_for_calls(server, before + 1)
        conn.send(b"c" * 99_001)
        resp = conn.read_response()
        assert conn.read_to_close() == b""
    if path == "/":
        assert resp.status == 413
        assert resp.body == b"Payload Too Large: the request body is larger than this server accepts (100000 bytes)\n"
    else:
        assert "larger than this server accepts (100000 bytes)" in echoed(resp)["error"]


# ---------------------------------------------------------------------------------------------
# Logs: one escaped line per refused request


REFUSALS = [
    (request("/a%1b[31m", ["Host: twice"]), False, "more than one Host header; answered 400: GET /a%1b[31m"),
    (b"GET /x HTTP/1.1\r\nX: a\x00b\r\n\r\n", False, "refused a malformed request from"),
    (b"GET /x HTTP/1.1\r\nHost: ex", True, "the connection ended inside the request head"),
    (request("/c", ["Transfer-Encoding: chunked"], b"zz\r\n", method="POST"), False, "malformed or incomplete request body"),
    (request("/d", ["Content-Length: 40000000"], method="POST"), False, "larger than this server accepts (33554432 bytes); answered 413"),
    (request("/e", ["Expect: x"]), False, "the only expectation supported is 100-continue; answered 417"),
    (request("/f", host=False), False, "an HTTP/1.1 request without a Host header; answered 400: GET /f"),
    (request("/g", ["Content-Length: 1", "Transfer-Encoding: chunked"], b"0\r\n\r\n", method="POST"), False,
     "refused a malformed request from"),
    (b"GET /h HTTP/1.1\nHost: x\n\n", False, "refused a malformed request from"),
]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_each_refusal_is_logged_once(serve, log_format):
    server = serve(APP, "--log-format", log_format)
    for raw, eof, _ in REFUSALS:
        assert len(responses(server, raw, eof)) == 1
    server.stop()
    lines = [line for line in server.stderr.splitlines() if "refused" in line]
    assert len(lines) == len(REFUSALS), lines
    for line, (_, _, expected) in zip(lines, REFUSALS):
        assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in line), line
        if log_format == "json":
            entry = json.loads(line)
            assert entry["severity"] == "INFO"
            line = entry["message"]
        assert expected in line
        assert "127.0.0.1:" in line


def test_refusals_by_coldbrew_are_in_the_access_log(serve, tmp_path):
    # coldbrew's checks run on a parsed request, which is logged with its answer; hyper's own
    # refusals are logged with what their first line holds, and no headers.
    access = tmp_path / "access.log"
    server = serve(APP, "--access-logfile", str(access))
    refused(server, request("/dup", ["Host: twice"]), 400)
    refused(server, b"GET /x HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400)
    server.stop()
    lines = [line for line in access.read_text().splitlines() if "/__calls" not in line]
    assert len(lines) == 2, lines
    assert sum('"GET /dup HTTP/1.1" 400' in line for line in lines) == 1, lines
    assert sum(line.endswith('"GET /x HTTP/1.1" 400 - "-" "-"') for line in lines) == 1, lines
