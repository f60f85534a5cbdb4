"""HTTP/1.1 behaviour of a real coldbrew server, checked byte-for-byte on raw sockets.

The app is tests/apps/http_apps.py. The small raw-socket client below (RawConn)
is also used by test_lifecycle.py and test_concurrency.py.
"""

import email.utils
import socket
import threading
import time
from datetime import datetime, timezone

import pytest

APP = "http_apps:app"


# --------------------------------------------------------------------------------------
# A minimal HTTP/1.x client that frames responses by hand.
# --------------------------------------------------------------------------------------


class Response:
    def __init__(self, version, status, reason, headers, raw_head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value) in wire order
        self.raw_head = raw_head
        self.body = b""
        self.framing = None  # "length", "chunked", "close" or "none"
        self.chunks = []  # chunk sizes as sent, for chunked bodies
        self.trailers = []

    def header(self, name):
        values = [v for k, v in self.headers if k == name.lower()]
        assert len(values) <= 1, f"header {name!r} appears {len(values)} times: {self.raw_head!r}"
        return values[0] if values else None

    def __repr__(self):
        return f"<Response {self.status} {self.headers!r} body={self.body[:200]!r}>"


class RawConn:
    """A socket plus a read buffer; every read is bounded by the socket timeout."""

    def __init__(self, sock, timeout=10.0):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.buf = b""

    @classmethod
    def open(cls, server, timeout=10.0):
        return cls(server.connect(timeout=timeout), timeout=timeout)

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed by the server; unread buffer {self.buf[:200]!r}")
        self.buf += data

    def read_until(self, delim):
        while delim not in self.buf:
            self._fill()
        idx = self.buf.index(delim) + len(delim)
        out, self.buf = self.buf[:idx], self.buf[idx:]
        return out

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_to_close(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            self.buf += data
        out, self.buf = self.buf, b""
        return out

    def peek(self, n, timeout=None):
        """Wait until at least n bytes are buffered (or timeout) and return the buffer."""
        old = self.sock.gettimeout()
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            while len(self.buf) < n:
                self._fill()
        finally:
            self.sock.settimeout(old)
        return self.buf

    def read_head(self):
        raw = self.read_until(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        status, _, reason = rest.partition(b" ")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            assert sep, f"malformed header line {line!r} in {raw!r}"
            headers.append((name.decode("latin-1").strip().lower(), value.decode("latin-1").strip()))
        return Response(version.decode(), int(status), reason.decode("latin-1"), headers, raw)

    def read_response(self, method="GET"):
        """Read one response, framed as RFC 9112 section 6.3 says."""
        resp = self.read_head()
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if method == "HEAD" or 100 <= resp.status < 200 or resp.status in (204, 304):
            resp.framing = "none"
        elif te is not None:
            assert te.lower() == "chunked", f"unexpected Transfer-Encoding {te!r}"
            assert cl is None, "both Transfer-Encoding and Content-Length sent"
            resp.framing = "chunked"
            resp.body = self._read_chunked(resp)
        elif cl is not None:
            resp.framing = "length"
            resp.body = self.read_exact(int(cl))
        else:
            resp.framing = "close"
            resp.body = self.read_to_close()
        return resp

    def _read_chunked(self, resp):
        body = []
        while True:
            line = self.read_until(b"\r\n")[:-2]
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                break
            resp.chunks.append(size)
            body.append(self.read_exact(size))
            assert self.read_exact(2) == b"\r\n", "chunk data not followed by CRLF"
        while True:
            line = self.read_until(b"\r\n")[:-2]
            if not line:
                break
            resp.trailers.append(line)
        return b"".join(body)

    def closed_by_peer(self, timeout=3.0):
        """True if the server closes the connection (EOF or reset) within timeout with no data."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        if data:
            self.buf += data
            return False
        return True


def get(path, host="localhost", version="HTTP/1.1", method="GET", headers=()):
    lines = [f"{method} {path} {version}", f"Host: {host}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def post(path, body, headers=(), version="HTTP/1.1"):
    return get(path, method="POST", version=version,
               headers=[f"Content-Length: {len(body)}", *headers]) + body


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@pytest.fixture
def server(serve):
    return serve(APP, "--threads", "2")


def test_keep_alive_several_requests_on_one_connection(server):
    with RawConn.open(server) as conn:
        for i in range(5):
            conn.send(get(f"/ka/{i}?n={i}"))
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.framing == "length"
            assert resp.body == f"GET /ka/{i}?n={i}".encode()
            assert (resp.header("connection") or "").lower() != "close"
        # Still open and usable after the loop.
        conn.send(get("/ka/last"))
        assert conn.read_response().body == b"GET /ka/last"


def test_pipelined_requests_answered_in_order(server):
    with RawConn.open(server) as conn:
        conn.send(get("/first") + get("/second") + get("/third"))
        bodies = [conn.read_response().body for _ in range(3)]
        assert bodies == [b"GET /first", b"GET /second", b"GET /third"]


def test_pipelined_requests_with_bodies_in_order(server):
    with RawConn.open(server) as conn:
        conn.send(post("/echo-body", b"one") + get("/middle") + post("/echo-body", b"three!"))
        bodies = [conn.read_response().body for _ in range(3)]
        assert bodies == [b"one", b"GET /middle", b"three!"]


def test_pipelined_slow_request_does_not_reorder_responses(server):
    # With 2 threads the fast request could finish first; its response must still wait.
    with RawConn.open(server) as conn:
        conn.send(get("/sleep?s=0.3") + get("/fast"))
        assert conn.read_response().body == b"slept"
        assert conn.read_response().body == b"GET /fast"


def test_http11_connection_close_request_is_honoured(server):
    with RawConn.open(server) as conn:
        conn.send(get("/bye", headers=["Connection: close"]))
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"GET /bye"
        assert (resp.header("connection") or "").lower() == "close"
        assert conn.closed_by_peer(timeout=3.0), "server kept the connection after Connection: close"


def test_http10_without_keep_alive_is_closed_after_response(server):
    with RawConn.open(server) as conn:
        conn.send(get("/old", version="HTTP/1.0"))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == b"GET /old"
        assert resp.version in ("HTTP/1.0", "HTTP/1.1")
        assert conn.closed_by_peer(timeout=3.0), "server kept an HTTP/1.0 connection open without keep-alive"


def test_http10_with_keep_alive_stays_open(server):
    with RawConn.open(server) as conn:
        conn.send(get("/old-ka/1", version="HTTP/1.0", headers=["Connection: keep-alive"]))
        first = conn.read_response()
        assert first.status == 200
        assert first.header("content-length") == str(len(b"GET /old-ka/1"))
        assert first.body == b"GET /old-ka/1"
        # An HTTP/1.0 client only keeps the connection if the server says so.
        assert (first.header("connection") or "").lower() == "keep-alive"
        conn.send(get("/old-ka/2", version="HTTP/1.0", headers=["Connection: keep-alive"]))
        second = conn.read_response()
        assert second.status == 200
        assert second.body == b"GET /old-ka/2"


def test_http10_keep_alive_with_unknown_length_is_delimited_by_close(server):
    # No Content-Length from the app, and chunked does not exist in HTTP/1.0: the body
    # must end with the connection, and must not carry chunked framing.
    with RawConn.open(server) as conn:
        conn.send(get("/stream?parts=a,b,c", version="HTTP/1.0", headers=["Connection: keep-alive"]))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") is None
        assert resp.framing == "close"
        assert resp.body == b"abc"


@pytest.mark.parametrize("trailer", [False, True], ids=["no-trailer", "trailer"])
def test_chunked_request_body_reaches_app(server, trailer):
    chunks = [b"hello ", b"chunked", b" world" * 50, b"!"]
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n"
    wire += b"X-Checksum: abc\r\n\r\n" if trailer else b"\r\n"
    head = get("/echo-body", method="POST", headers=["Transfer-Encoding: chunked"])
    with RawConn.open(server) as conn:
        conn.send(head)
        # Send the chunks in separate writes so they arrive as separate segments.
        for i in range(0, len(wire), 97):
            conn.send(wire[i:i + 97])
            time.sleep(0.005)
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == b"".join(chunks)
        # The connection is still in sync for the next request.
        conn.send(get("/after-chunked"))
        assert conn.read_response().body == b"GET /after-chunked"


def test_chunked_request_body_with_extension(server):
    wire = b"3;name=value\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    with RawConn.open(server) as conn:
        conn.send(get("/echo-body", method="POST", headers=["Transfer-Encoding: chunked"]) + wire)
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.body == b"abcde"


def test_large_chunked_request_body_beyond_request_buffer(serve):
    # 1 MiB in 4 KiB chunks, four times --request-buffer: it must still arrive whole.
    server = serve(APP, "--threads", "2", "--request-buffer", "256K")
    body = bytes(i % 253 for i in range(1024 * 1024))
    wire = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096])
                    for i in range(0, len(body), 4096)) + b"0\r\n\r\n"
    with RawConn.open(server, timeout=20.0) as conn:
        conn.send(get("/echo-body", method="POST", headers=["Transfer-Encoding: chunked"]))
        sender = threading.Thread(target=conn.send, args=(wire,), daemon=True)
        sender.start()
        resp = conn.read_response()
        sender.join(10)
        assert resp.status == 200
        assert len(resp.body) == len(body) and resp.body == body


def test_generator_without_content_length_is_sent_chunked(server):
    with RawConn.open(server) as conn:
        conn.send(get("/stream?parts=alpha,beta,gamma"))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("content-length") is None
        assert (resp.header("transfer-encoding") or "").lower() == "chunked"
        assert resp.framing == "chunked"
        assert resp.body == b"alphabetagamma"
        assert resp.chunks and all(size > 0 for size in resp.chunks)
        # Chunked framing ended cleanly: the connection is reusable.
        conn.send(get("/after-stream"))
        assert conn.read_response().body == b"GET /after-stream"


def test_app_content_length_is_passed_through(server):
    with RawConn.open(server) as conn:
        conn.send(get("/stream-length"))
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") is None
        assert resp.header("content-length") == str(len(b"one-two-three"))
        assert resp.body == b"one-two-three"
        conn.send(get("/after"))
        assert conn.read_response().body == b"GET /after"


def test_expect_100_continue_sent_when_app_reads_body(server):
    body = b"payload-after-continue"
    head = get("/echo-body", method="POST",
               headers=[f"Content-Length: {len(body)}", "Expect: 100-continue"])
    with RawConn.open(server) as conn:
        conn.send(head)
        interim = conn.read_response()
        assert interim.status == 100, f"expected 100 Continue first, got {interim!r}"
        assert interim.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n")
        conn.send(body)
        final = conn.read_response()
        assert final.status == 200
        assert final.body == body


def test_expect_100_continue_not_sent_when_app_ignores_body(server):
    head = get("/ignore-body", method="POST",
               headers=["Content-Length: 5000", "Expect: 100-continue"])
    with RawConn.open(server) as conn:
        conn.send(head)
        # Do not send the body: the final response must arrive without a 100 before it.
        data = conn.peek(12, timeout=5.0)
        assert data.startswith(b"HTTP/1.1 200"), f"first bytes were {data[:80]!r}"
        final = conn.read_response()
        assert final.status == 200
        assert final.body == b"ignored"
        assert b"100 Continue" not in conn.buf


def test_head_has_no_body_but_keeps_content_length(server):
    with RawConn.open(server) as conn:
        conn.send(get("/stream-length"))
        get_resp = conn.read_response()
        # HEAD then GET pipelined: right after the HEAD's head comes the next response.
        conn.send(get("/stream-length", method="HEAD") + get("/next"))
        head_resp = conn.read_head()
        assert head_resp.status == 200
        assert head_resp.header("content-length") == get_resp.header("content-length") == "13"
        assert conn.peek(12).startswith(b"HTTP/1.1 200"), f"bytes after HEAD response: {conn.buf[:80]!r}"
        assert conn.read_response().body == b"GET /next"


def test_head_of_streamed_response_has_no_body(server):
    with RawConn.open(server) as conn:
        conn.send(get("/stream", method="HEAD") + get("/next"))
        head_resp = conn.read_head()
        assert head_resp.status == 200
        assert conn.peek(12).startswith(b"HTTP/1.1 200"), f"bytes after HEAD response: {conn.buf[:80]!r}"
        assert conn.read_response().body == b"GET /next"


@pytest.mark.parametrize("code", [204, 304])
def test_no_body_for_204_and_304(server, code):
    with RawConn.open(server) as conn:
        conn.send(get(f"/status/{code}") + get("/next"))
        resp = conn.read_head()
        assert resp.status == code
        assert resp.header("transfer-encoding") is None
        if code == 204:
            assert resp.header("content-length") is None
        assert conn.peek(12).startswith(b"HTTP/1.1 200"), f"bytes after {code} head: {conn.buf[:80]!r}"
        assert conn.read_response().body == b"GET /next"


def test_date_and_server_headers(server):
    with RawConn.open(server) as conn:
        conn.send(get("/hdrs"))
        resp = conn.read_response()
        assert resp.status == 200
        server_hdr = resp.header("server")
        assert server_hdr and server_hdr.strip()
        date = resp.header("date")
        assert date is not None, resp.raw_head
        parsed = email.utils.parsedate_to_datetime(date)
        assert date.endswith(" GMT")
        assert abs((datetime.now(timezone.utc) - parsed).total_seconds()) < 120
