"""PEP 3333: start_response, write(), exc_info, the response iterable and its close().

The app is the router in tests/apps/pep3333_apps.py. Close counts are read back through
`/closed-count?token=...`; with `--threads 1` that request is served only after the previous
one has completely finished on the single Python thread, so the count is final.
"""

import http.client
import sys
import uuid

import pytest
import requests

from conftest import APPS

sys.path.insert(0, str(APPS))
from pep3333_client import get_raw, http_get, recv_all  # noqa: E402

APP = "pep3333_apps:app"


@pytest.fixture
def server(serve):
    return serve(APP, "--threads", "4")


@pytest.fixture
def server1(serve):
    """One Python thread: requests are handled strictly one after another."""
    return serve(APP, "--threads", "1")


def token():
    return uuid.uuid4().hex


def closed_count(server, tok):
    r = requests.get(server.url + "/closed-count", params={"token": tok}, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()["count"]


def assert_internal_error(resp_status, body):
    assert resp_status == 500, body
    assert b"Internal Server Error" in body


def assert_aborted(resp, partial):
    """The app failed after its head was committed: the client must not get a complete-looking
    response. Either nothing at all arrived (the server dropped the connection before flushing
    the head), or a 200 head whose body stops without the chunked terminator."""
    if resp.raw == b"":
        return
    assert resp.status == 200, resp.raw
    assert partial in resp.body, resp.raw
    assert not resp.body_complete, f"the body looks complete although the app failed: {resp.raw!r}"


def assert_http_client_aborted(server, path):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            resp = conn.getresponse()
            assert resp.status == 200
            resp.read()
    finally:
        conn.close()


def assert_logged(server, *needles):
    server.stop()
    for needle in needles:
        assert needle in server.stderr, f"{needle!r} not in server stderr:\n{server.stderr}"


# ---------------------------------------------------------------------------------------------
# start_response argument checks

TYPE_CASES = [
    "status-bytes",
    "status-int",
    "status-nocode",
    "status-badcode",
    "headers-tuple",
    "headers-dict",
    "header-value-int",
    "header-value-bytes",
    "header-name-bytes",
    "header-not-pair",
    "value-nonlatin1",
    "name-nonlatin1",
]


@pytest.mark.parametrize("case", TYPE_CASES)
def test_start_response_invalid_arguments(serve, case):
    server = serve(APP, "--threads", "2")
    path = f"/bad-start/{case}"
    status, headers, body = http_get(server, path)
    assert_internal_error(status, body)
    assert b"should-not-be-sent" not in body
    assert_logged(server, path)


INJECTION_CASES = [
    "status-crlf",
    "status-lf",
    "status-cr",
    "status-nul",
    "name-crlf",
    "name-lf",
    "name-nul",
    "value-crlf",
    "value-lf",
    "value-cr",
    "value-nul",
]


@pytest.mark.parametrize("case", INJECTION_CASES)
def test_start_response_rejects_control_characters(serve, case):
    server = serve(APP, "--threads", "2")
    path = f"/bad-start/{case}"
    resp = get_raw(server, path)
    # Never a split response: the injected header must not appear anywhere on the wire.
    assert b"X-Injected" not in resp.raw, resp.raw
    assert resp.header("X-Injected") is None
    assert resp.status == 500, resp.raw
    assert b"should-not-be-sent" not in resp.raw
    assert_logged(server, path)


def test_latin1_header_value_sent_as_latin1_byte(server):
    resp = get_raw(server, "/latin1-header")
    assert resp.status == 200, resp.raw
    assert resp.header_all("X-Latin") == ["caf\xe9"]
    assert b"\r\nx-latin: caf\xe9\r\n" in resp.raw.split(b"\r\n\r\n")[0].lower() + b"\r\n"


def test_custom_reason_phrase(server):
    resp = get_raw(server, "/custom-reason")
    assert resp.status_line == b"HTTP/1.1 299 Custom Reason Here"


# ---------------------------------------------------------------------------------------------
# write()


def test_write_then_list_interleaves(server):
    r = requests.get(server.url + "/write-interleave", timeout=10)
    assert r.status_code == 200, r.text
    assert r.content == b"abcd"


def test_write_then_generator_interleaves(server):
    r = requests.get(server.url + "/write-then-generator", timeout=10)
    assert r.status_code == 200, r.text
    assert r.content == b"abcd"


def test_write_str_is_an_error(serve):
    server = serve(APP, "--threads", "2")
    status, headers, body = http_get(server, "/str-chunk/write")
    assert_internal_error(status, body)
    assert b"after-write" not in body
    assert_logged(server, "/str-chunk/write")


# ---------------------------------------------------------------------------------------------
# exc_info and repeated start_response


@pytest.mark.parametrize("path, status", [("/exc-info-before", 500), ("/exc-info-before-generator", 503)])
def test_exc_info_before_body_replaces_head(server, path, status):
    r = requests.get(server.url + path, timeout=10)
    assert r.status_code == status, r.text
    assert r.headers.get("X-New") == "1"
    assert "X-Old" not in r.headers
    assert r.content == b"error page"


def test_exc_info_after_headers_reraises_and_aborts(serve):
    server = serve(APP, "--threads", "2")
    resp = get_raw(server, "/exc-info-after")
    assert b"never-sent" not in resp.raw
    assert_aborted(resp, b"first-part")
    assert_logged(server, "late-failure-marker")


def test_exc_info_after_headers_client_sees_incomplete_read(server):
    assert_http_client_aborted(server, "/exc-info-after")


def test_start_response_twice_without_exc_info(serve):
    server = serve(APP, "--threads", "2")
    status, headers, body = http_get(server, "/twice")
    assert_internal_error(status, body)
    assert b"twice" not in body
    assert_logged(server, "/twice")


@pytest.mark.parametrize("path", ["/lazy", "/lazy-validated"])
def test_lazy_start_response(server, path):
    r = requests.get(server.url + path, timeout=10)
    assert r.status_code == 201, r.text
    assert r.reason == "Created"
    assert r.headers.get("X-Lazy") == "yes"
    assert r.content == b"lazy body"


# ---------------------------------------------------------------------------------------------
# the iterable


@pytest.mark.parametrize(
    "kind",
    ["list", "tuple", "generator", "custom", "iterator", "empty-chunks", "empty-chunks-generator", "bytes-subclass"],
)
def test_any_iterable_of_bytes(server, kind):
    r = requests.get(server.url + f"/iter/{kind}", timeout=10)
    assert r.status_code == 200, r.text
    assert r.content == b"hello world"


@pytest.mark.parametrize("kind", ["list", "tuple", "generator", "custom", "empty-chunks"])
def test_any_iterable_of_bytes_validated(server, kind):
    r = requests.get(server.url + f"/iter-validated/{kind}", timeout=10)
    assert r.status_code == 200, r.text
    assert r.content == b"hello world"


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_str_chunk_is_an_error(serve, kind):
    server = serve(APP, "--threads", "2")
    path = f"/str-chunk/{kind}"
    status, headers, body = http_get(server, path)
    assert_internal_error(status, body)
    assert b"text" not in body.replace(b"text/plain", b"")
    assert_logged(server, path)


@pytest.mark.parametrize("route", ["/tracked", "/tracked-validated"])
@pytest.mark.parametrize("mode", ["normal", "list"])
def test_close_called_once_normal_end(server1, route, mode):
    tok = token()
    r = requests.get(server1.url + route, params={"token": tok, "mode": mode}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.content == b"part1;part2;part3;"
    assert closed_count(server1, tok) == 1
    server1.stop()
    assert "garbage collected without being closed" not in server1.stderr


@pytest.mark.parametrize("route", ["/tracked", "/tracked-validated"])
def test_close_called_once_when_iteration_raises_first(server1, route):
    tok = token()
    status, headers, body = http_get(server1, f"{route}?token={tok}&mode=raise-first")
    assert_internal_error(status, body)
    assert b"tracked-raise-first" not in body
    assert closed_count(server1, tok) == 1
    assert_logged(server1, "tracked-raise-first")


@pytest.mark.parametrize("route", ["/tracked", "/tracked-validated"])
def test_close_called_once_when_iteration_raises_later(server1, route):
    tok = token()
    resp = get_raw(server1, f"{route}?token={tok}&mode=raise-later")
    assert_aborted(resp, b"before-the-error")
    assert closed_count(server1, tok) == 1
    assert_logged(server1, "tracked-raise-later")


@pytest.mark.parametrize("route", ["/tracked", "/tracked-validated"])
def test_close_called_once_on_client_disconnect(serve, route):
    server = serve(APP, "--threads", "1", "--response-buffer", "64K")
    tok = token()
    sock = server.connect()
    try:
        sock.sendall(
            f"GET {route}?token={tok}&mode=forever&chunk=65536 HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        received = b""
        while len(received) < 300_000:
            data = sock.recv(65536)
            assert data, "server closed the endless response"
            received += data
        assert received.startswith(b"HTTP/1.1 200")
    finally:
        sock.close()
    # With one Python thread this is served only once the endless response was given up.
    assert closed_count(server, tok) == 1
    r = requests.get(server.url + "/ok", timeout=20)
    assert r.status_code == 200
    assert r.content == b"ok"
    assert closed_count(server, tok) == 1
    server.stop()
    assert "garbage collected without being closed" not in server.stderr


def test_raise_before_start_response(server1):
    status, headers, body = http_get(server1, "/raise-before")
    assert_internal_error(status, body)
    assert b"Traceback" not in body
    assert b"secret-detail" not in body
    assert b"RuntimeError" not in body
    # The server keeps serving, on the same (only) Python thread.
    r = requests.get(server1.url + "/ok", timeout=10)
    assert r.status_code == 200
    # The full traceback, with the app's own frame, not just the exception line.
    assert_logged(server1, "Traceback (most recent call last)", "pep3333_apps.py", "secret-detail-before-start-response")


def test_raise_after_headers_aborts_connection(server1):
    resp = get_raw(server1, "/raise-after-headers")
    assert_aborted(resp, b"partial-data")
    r = requests.get(server1.url + "/ok", timeout=10)
    assert r.status_code == 200
    assert_logged(server1, "boom-after-headers-marker")


def test_raise_after_headers_http_client(server):
    assert_http_client_aborted(server, "/raise-after-headers")


# ---------------------------------------------------------------------------------------------
# framing: chunked vs Content-Length


def test_generator_without_length_is_chunked(server):
    resp = get_raw(server, "/chunked-generator")
    assert resp.status == 200, resp.raw
    assert resp.header("Transfer-Encoding") == "chunked"
    assert resp.header("Content-Length") is None
    assert resp.body_complete
    assert resp.body == b"chunk-one;chunk-two;chunk-three"


def test_generator_with_app_content_length(server):
    resp = get_raw(server, "/generator-with-length")
    assert resp.status == 200, resp.raw
    assert resp.header_all("Content-Length") == ["10"]
    assert resp.header("Transfer-Encoding") is None
    assert resp.body == b"0123456789"


@pytest.mark.parametrize("path", ["/generator-too-long", "/write-too-long"])
def test_no_bytes_beyond_app_content_length(server, path):
    """PEP 3333: the server should not transmit more bytes than the Content-Length allows.
    The next pipelined response must follow the 10 announced bytes, or the connection ends."""
    with server.connect() as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            + b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        raw = recv_all(sock)
    assert b"EXTRA" not in raw, raw
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw
    assert rest[:10] == b"0123456789"
    assert rest[10:] == b"" or rest[10:].startswith(b"HTTP/1.1 200"), raw


def short_body_exchange(server):
    with server.connect() as sock:
        # A keep-alive request: only closing the connection tells the client the body is short
        # (recv_all returns at EOF and raises on timeout).
        sock.sendall(b"GET /generator-too-short HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = recv_all(sock)
    head, _, rest = raw.partition(b"\r\n\r\n")
    if raw:
        assert head.startswith(b"HTTP/1.1 200"), raw
        assert rest == b"01234"


def test_short_body_for_content_length_closes_connection(server):
    short_body_exchange(server)


def test_short_body_for_content_length_is_logged(serve):
    """PEP 3333: "...the server should close the connection and log or otherwise report the
    error." """
    server = serve(APP, "--threads", "2")
    short_body_exchange(server)
    assert_logged(server, "/generator-too-short")


@pytest.mark.parametrize("path, body", [("/list-body", b"list-body"), ("/tuple-body", b"tuple-body")])
def test_list_and_tuple_get_content_length(server, path, body):
    resp = get_raw(server, path)
    assert resp.status == 200, resp.raw
    assert resp.header_all("Content-Length") == [str(len(body))]
    assert resp.header("Transfer-Encoding") is None
    assert resp.body == body


def test_keep_alive_after_streamed_and_listed_responses(server):
    """Several responses of each framing on one connection are each delimited correctly."""
    with server.connect() as sock:
        paths = ["/chunked-generator", "/list-body", "/generator-with-length", "/write-interleave", "/ok"]
        request = b"".join(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for p in paths)
        request += b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        sock.sendall(request)
        raw = recv_all(sock)
    assert raw.count(b"HTTP/1.1 200") == len(paths) + 1
    for fragment in (b"chunk-one;", b"chunk-two;", b"chunk-three", b"list-body", b"0123456789", b"ok"):
        assert fragment in raw
