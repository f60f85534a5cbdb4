"""PEP 3333: wsgi.input, the request body as a file-like object.

`/input/ops?ops=...` runs a sequence of read calls in the app and answers their results, so
the exact semantics of read/readline/readlines/iteration can be checked. Large bodies are hashed
by the app while it reads them in pieces and compared with the client's hash.
"""

import hashlib
import http.client
import io
import json
import os
import random
import sys

import pytest
import requests

from conftest import APPS

sys.path.insert(0, str(APPS))
from pep3333_client import connect_raw, raw_request  # noqa: E402

APP = "pep3333_apps:app"


@pytest.fixture
def server(serve):
    return serve(APP, "--threads", "2")


def run_ops(server, body, ops, validated=False, chunked=False):
    path = "/input/ops-validated" if validated else "/input/ops"
    data = body
    if chunked:
        # A generator body makes requests send Transfer-Encoding: chunked.
        data = (body[i : i + 3] for i in range(0, len(body), 3))
    r = requests.post(server.url + path, params={"ops": ",".join(ops)}, data=data, timeout=15)
    assert r.status_code == 200, r.text
    return r.json()


def L(b):
    """bytes -> the latin-1 str the app answers with."""
    return b.decode("latin-1")


BODY = b"first line\nsecond\n\nlast-no-newline"


# ---------------------------------------------------------------------------------------------
# read


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("arg", ["", ":-1", ":None"], ids=["read()", "read(-1)", "read(None)"])
def test_read_all(server, arg, chunked):
    assert run_ops(server, BODY, ["read" + arg, "read" + arg], chunked=chunked) == [L(BODY), ""]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_read_n(server, chunked):
    results = run_ops(server, BODY, ["read:5", "read:0", "read:6", "read:1000", "read:1", "read:10"], chunked=chunked)
    assert results == [L(BODY[:5]), "", L(BODY[5:11]), L(BODY[11:]), "", ""]


def test_read_n_validated(server):
    """The same through wsgiref.validate, which also checks every result is bytes."""
    results = run_ops(server, BODY, ["read:5", "read:1000", "read:10"], validated=True)
    assert results == [L(BODY[:5]), L(BODY[5:]), ""]


def test_read_empty_body(server):
    assert run_ops(server, b"", ["read", "read:10", "readline", "readlines"]) == ["", "", "", []]


def test_read_without_body_get(server):
    r = requests.get(server.url + "/input/ops", params={"ops": "read,read:10,readline,readlines,iter"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == ["", "", "", [], []]


# ---------------------------------------------------------------------------------------------
# readline


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_readline_keeps_newline(server, chunked):
    results = run_ops(server, BODY, ["readline"] * 6, chunked=chunked)
    assert results == ["first line\n", "second\n", "\n", "last-no-newline", "", ""]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_readline_size(server, chunked):
    body = b"123456789\nnext\n"
    results = run_ops(server, body, ["readline:4", "readline", "readline:100", "readline:0", "readline"], chunked=chunked)
    assert results == ["1234", "56789\n", "next\n", "", ""]


def test_readline_size_stops_at_newline(server):
    body = b"ab\ncdefgh\n"
    assert run_ops(server, body, ["readline:10", "readline:3", "readline:3", "readline:3"]) == [
        "ab\n",
        "cde",
        "fgh",
        "\n",
    ]


@pytest.mark.parametrize("arg", [":-1", ":None"])
def test_readline_unlimited_size(server, arg):
    assert run_ops(server, BODY, ["readline" + arg, "readline" + arg]) == ["first line\n", "second\n"]


def test_readline_validated(server):
    body = b"123456789\nnext\n"
    assert run_ops(server, body, ["readline:4", "readline", "readline"], validated=True) == ["1234", "56789\n", "next\n"]


# ---------------------------------------------------------------------------------------------
# readlines / iteration


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_readlines(server, chunked):
    assert run_ops(server, BODY, ["readlines", "readlines"], chunked=chunked) == [
        ["first line\n", "second\n", "\n", "last-no-newline"],
        [],
    ]


@pytest.mark.parametrize("hint", [1, 5, 12, 18, 1000])
def test_readlines_hint(server, hint):
    """PEP 3333 lets the server ignore the hint, but what it returns must be whole lines, and
    what follows must continue exactly where they stopped."""
    results = run_ops(server, BODY, [f"readlines:{hint}", "read"])
    lines, rest = results
    assert lines, "readlines(hint) returned nothing although the body is not empty"
    for line in lines[:-1]:
        assert line.endswith("\n")
    assert "".join(lines) + rest == L(BODY)
    assert lines[0] == "first line\n"
    expected_lines = io.BytesIO(BODY).readlines()
    assert lines == [L(x) for x in expected_lines[: len(lines)]]


def test_readlines_validated(server):
    assert run_ops(server, BODY, ["readlines"], validated=True) == [["first line\n", "second\n", "\n", "last-no-newline"]]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_iteration_yields_lines(server, chunked):
    assert run_ops(server, BODY, ["iter", "read"], chunked=chunked) == [
        ["first line\n", "second\n", "\n", "last-no-newline"],
        "",
    ]


def test_mixed_calls(server):
    results = run_ops(server, BODY, ["read:3", "readline", "readline:2", "readlines", "read"])
    assert results == ["fir", "st line\n", "se", ["cond\n", "\n", "last-no-newline"], ""]


def test_binary_body_all_byte_values(server):
    body = bytes(range(256)) * 4
    assert run_ops(server, body, ["read"]) == [L(body)]
    lines = io.BytesIO(body).readlines()  # only b'\n' ends a line
    assert run_ops(server, body, ["readlines"]) == [[L(x) for x in lines]]


# ---------------------------------------------------------------------------------------------
# sizes relative to --request-buffer, streaming


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [1, 1000, 65535, 65536, 65537, 200_000, 1 << 20])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_sizes_around_request_buffer(serve, size, chunked):
    server = serve(APP, "--threads", "2", "--request-buffer", "64K")
    body = os.urandom(size)
    data = body
    if chunked:
        data = (body[i : i + 8191] for i in range(0, len(body), 8191))
    r = requests.post(server.url + "/input/sha256", data=data, timeout=30)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["size"] == size
    assert result["sha256"] == sha(body)
    assert result["max_chunk"] <= 65536
    # Also the classic way: exactly CONTENT_LENGTH bytes.
    if not chunked:
        r = requests.post(server.url + "/input/sha256-cl", data=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json() == {"size": size, "sha256": sha(body)}


EIGHT_MIB = 8 << 20


@pytest.fixture(scope="module")
def big_body():
    return os.urandom(EIGHT_MIB)


def test_large_body_content_length(serve, big_body):
    server = serve(APP, "--threads", "2")  # default --request-buffer (256K) is far below 8 MiB
    r = requests.post(server.url + "/input/sha256", data=big_body, timeout=60)
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["size"] == EIGHT_MIB
    assert result["sha256"] == sha(big_body)
    assert 0 < result["max_chunk"] <= 65536
    assert result["reads"] >= EIGHT_MIB // 65536 + 1


def test_large_body_chunked_generator(serve, big_body):
    server = serve(APP, "--threads", "2")
    r = requests.post(
        server.url + "/input/sha256",
        data=(big_body[i : i + 100_000] for i in range(0, len(big_body), 100_000)),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["size"] == EIGHT_MIB
    assert r.json()["sha256"] == sha(big_body)


def test_large_body_chunked_raw_socket_odd_sizes(serve, big_body):
    """Transfer-Encoding: chunked written by hand, with irregular chunk sizes and extensions."""
    server = serve(APP, "--threads", "2")
    rng = random.Random(3333)
    pieces = []
    pos = 0
    while pos < len(big_body):
        n = rng.choice([1, 7, 4096, 65535, 65536, 65537, 300_000])
        chunk = big_body[pos : pos + n]
        ext = b";ext=1" if rng.random() < 0.1 else b""
        pieces.append(b"%x%s\r\n%s\r\n" % (len(chunk), ext, chunk))
        pos += n
    request = (
        b"POST /input/sha256 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + b"".join(pieces)
        + b"0\r\n\r\n"
    )
    resp = raw_request(server, request, timeout=60)
    assert resp.status == 200, resp.raw[:500]
    result = resp.json()
    assert result["size"] == EIGHT_MIB
    assert result["sha256"] == sha(big_body)


def test_large_body_lines_across_reads(serve):
    """Iterating lines of a body much larger than --request-buffer, with lines of every length
    (some longer than the buffer), gives back exactly the body."""
    server = serve(APP, "--threads", "2", "--request-buffer", "64K")
    rng = random.Random(42)
    lines = []
    total = 0
    while total < (3 << 20):
        n = rng.choice([0, 1, 10, 1000, 70_000, 200_000])
        line = bytes(rng.choice(b"abcdefgh") for _ in range(min(n, 50))) * (n // 50 + 1)
        line = line[:n] + b"\n"
        lines.append(line)
        total += len(line)
    body = b"".join(lines) + b"tail-without-newline"
    for data in (body, (body[i : i + 12345] for i in range(0, len(body), 12345))):
        r = requests.post(server.url + "/input/lines", data=data, timeout=60)
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["bad"] == 0
        assert result["size"] == len(body)
        assert result["sha256"] == sha(body)
        assert result["lines"] == len(lines) + 1


@pytest.mark.parametrize("size", [1, 7, 1000, 65536, 100_000])
def test_large_body_readline_size_across_reads(serve, size):
    """readline(size) on a streamed body: never more than `size` bytes, never a short piece
    except at a newline or the end, and everything arrives in order."""
    server = serve(APP, "--threads", "2", "--request-buffer", "64K")
    rng = random.Random(size)
    parts = []
    total = 0
    while total < (1 << 20):
        n = rng.choice([0, 3, 999, 70_000, 150_000])
        parts.append(b"y" * n + b"\n")
        total += n + 1
    body = b"".join(parts) + b"no-newline-at-end"
    for data in (body, (body[i : i + 9999] for i in range(0, len(body), 9999))):
        r = requests.post(server.url + "/input/lines", params={"size": str(size)}, data=data, timeout=60)
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["bad"] == 0
        assert result["size"] == len(body)
        assert result["sha256"] == sha(body)


def test_two_requests_on_one_connection_keep_their_bodies(server):
    """Keep-alive: the second request's body must not be mixed with the first's."""
    with requests.Session() as s:
        a = s.post(server.url + "/input/ops", params={"ops": "read"}, data=b"first-body", timeout=10)
        b = s.post(server.url + "/input/ops", params={"ops": "read"}, data=b"second-body", timeout=10)
    assert a.json() == ["first-body"]
    assert b.json() == ["second-body"]


def _response_on(sock):
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response, response.read()


def test_an_answer_before_the_body_is_read_closes_the_connection(serve):
    """The app answers while most of a streamed body is still unsent. The rest is dropped
    unread, so the head must say the connection closes: a client that reused it would send
    its next request into a connection the server is closing."""
    server = serve(APP, "--request-buffer", "64K")
    with connect_raw(server) as sock:
        host = f"127.0.0.1:{server.port}"
        sock.sendall(f"POST /ok HTTP/1.1\r\nHost: {host}\r\nContent-Length: {1 << 20}\r\n\r\n".encode() + b"x" * 1000)
        response, _ = _response_on(sock)
        assert response.status == 200
        assert response.getheader("Connection") == "close", response.getheaders()


def test_a_streamed_body_read_to_its_end_keeps_the_connection(serve):
    server = serve(APP, "--request-buffer", "64K")
    body = os.urandom(1 << 20)
    with connect_raw(server) as sock:
        host = f"127.0.0.1:{server.port}"
        # The app reads exactly Content-Length bytes and never asks past them.
        head = f"POST /input/sha256-cl HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        response, answer = _response_on(sock)
        assert response.status == 200
        assert json.loads(answer) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        assert response.getheader("Connection") is None, response.getheaders()
        sock.sendall(f"GET /ok HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        again, _ = _response_on(sock)
        assert again.status == 200


def test_unread_body_does_not_break_next_request(serve):
    """An app that ignores a large body: the next request on the connection still works."""
    server = serve(APP, "--threads", "2", "--request-buffer", "64K")
    with requests.Session() as s:
        r = s.post(server.url + "/ok", data=os.urandom(1 << 20), timeout=30)
        assert r.status_code == 200
        r = s.post(server.url + "/input/ops", params={"ops": "read"}, data=b"after", timeout=30)
        assert r.status_code == 200
        assert r.json() == ["after"]
