"""ASGI request bodies over real sockets: streamed to receive() in `http.request` messages.

A body larger than --request-buffer goes to the app through a bounded pipe as it arrives,
with backpressure on the client; `Expect: 100-continue` is answered only once the app calls
receive(); a body that fails before the response began is answered 413/408/400, and the app
is told `http.disconnect`. The apps are in tests/apps/asgi_body_apps.py.
"""

import hashlib
import json
import os
import threading
import time

import requests

KiB = 1024
MiB = 1024 * 1024
APP = "asgi_body_apps:app"


# --- helpers ------------------------------------------------------------------------------


class Reply:
    def __init__(self, status, raw_head, headers, body):
        self.status = status
        self.raw_head = raw_head
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"Reply({self.status}, {self.raw_head!r}, body={self.body[:200]!r})"


class Conn:
    """A raw socket and a read buffer; every read is bounded by the socket timeout."""

    def __init__(self, server=None, timeout=10.0, sock=None):
        self.sock = sock if sock is not None else server.connect(timeout=timeout)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError(f"connection closed by the server; unread buffer {self.buf[:200]!r}")
        self.buf += data

    def _until(self, delim):
        while delim not in self.buf:
            self._fill()
        end = self.buf.index(delim) + len(delim)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self):
        """One response (an interim 1xx too), framed by Content-Length, chunks or the close."""
        raw = self._until(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode()] = value.strip().decode()
        if 100 <= status < 200:
            return Reply(status, raw, headers, b"")
        if "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self._until(b"\r\n")[:-2].split(b";")[0], 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                parts.append(self._exact(size))
                self._exact(2)
            body = b"".join(parts)
        else:
            while True:
                try:
                    self._fill()
                except (EOFError, ConnectionResetError):
                    break
            body, self.buf = self.buf, b""
        return Reply(status, raw, headers, body)


def head(path, *headers, method="POST"):
    lines = [f"{method} {path} HTTP/1.1", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(body, sizes=(65536, 10000, 131072, 1, 40000)):
    """`body` in chunked framing, in chunks of varying sizes, with the last chunk."""
    out = []
    i = 0
    n = 0
    while i < len(body):
        size = sizes[n % len(sizes)]
        piece = body[i : i + size]
        out.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
        i += size
        n += 1
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def get(server, path, **params):
    return requests.get(server.url + path, params=params, timeout=10)


def wait_for(what, probe, timeout=10.0):
    """Polls probe() until it returns something truthy; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def last(server, rid, timeout=10.0):
    """What /digest (or /hold) saw for request `rid`, once it is over."""

    def probe():
        response = get(server, "/last", id=rid)
        return response.json() if response.status_code == 200 else None

    return wait_for(f"the app's account of request {rid}", probe, timeout)


def progress(server, rid):
    return get(server, "/progress", id=rid).json()


def still_serving(server):
    response = get(server, "/ping")
    assert response.status_code == 200 and response.content == b"pong"


def assert_streamed_whole(seen, body):
    assert seen["sha256"] == sha(body)
    assert seen["total"] == len(body)
    assert seen["types"] == ["http.request"] * seen["messages"]
    assert seen["messages"] > 1, f"the body came in one message: {seen['lengths']}"
    assert seen["more"][:-1] == [True] * (seen["messages"] - 1)
    assert seen["more"][-1] is False
    # The pipe is bounded: no message holds anything like the whole body.
    assert max(seen["lengths"]) < 1 * MiB, seen["lengths"]


class Sender(threading.Thread):
    """Sends `data` on `sock` in the background, stopping quietly if the server hangs up."""

    def __init__(self, sock, data):
        super().__init__(daemon=True)
        self.sock = sock
        self.data = data
        self.sent = 0
        self.error = None

    def run(self):
        view = memoryview(self.data)
        try:
            while self.sent < len(view):
                self.sent += self.sock.send(view[self.sent : self.sent + 65536])
        except OSError as exc:
            self.error = exc


# --- whole bodies, in pieces --------------------------------------------------------------


def test_a_large_body_streams_to_the_app_whole_and_in_order(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    body = os.urandom(4 * MiB)
    response = requests.post(server.url + "/digest", params={"id": "cl"}, data=body, timeout=30)
    assert response.status_code == 200, response.text
    assert_streamed_whole(response.json(), body)


def test_a_large_chunked_body_streams_to_the_app_whole_and_in_order(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    body = os.urandom(4 * MiB)
    with Conn(server, timeout=30) as conn:
        conn.sock.sendall(head("/digest?id=chunked", "Transfer-Encoding: chunked") + chunked(body))
        reply = conn.read_response()
    assert reply.status == 200, reply
    assert_streamed_whole(reply.json(), body)


def test_a_chunked_body_from_a_generator_arrives_whole(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    body = os.urandom(3 * MiB + 12345)

    def pieces():
        for i in range(0, len(body), 50000):
            yield body[i : i + 50000]

    response = requests.post(server.url + "/digest", params={"id": "gen"}, data=pieces(), timeout=30)
    assert response.status_code == 200, response.text
    assert_streamed_whole(response.json(), body)


def test_a_small_body_is_one_message_and_an_empty_one_too(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    body = os.urandom(1000)
    seen = requests.post(server.url + "/digest", params={"id": "small"}, data=body, timeout=10).json()
    assert seen["types"] == ["http.request"]
    assert seen["lengths"] == [1000] and seen["more"] == [False]
    assert seen["sha256"] == sha(body)

    seen = get(server, "/digest", id="empty").json()
    assert seen["types"] == ["http.request"]
    assert seen["lengths"] == [0] and seen["more"] == [False]

    # Just below the buffer, chunked: still read ahead, still one message.
    body = os.urandom(60 * KiB)
    with Conn(server) as conn:
        conn.sock.sendall(head("/digest?id=chunked-small", "Transfer-Encoding: chunked") + chunked(body, (5000,)))
        seen = conn.read_response().json()
    assert seen["types"] == ["http.request"] and seen["more"] == [False]
    assert seen["sha256"] == sha(body)


# --- backpressure -------------------------------------------------------------------------


def test_a_client_is_held_back_while_the_app_does_not_read(serve):
    # The app reads one message and then nothing until /release. The client offers a 64 MiB
    # body as fast as the kernel takes it: what the kernel takes is bounded by the socket
    # buffers on both sides, hyper's read buffer and the 64 KiB pipe, far below the body.
    server = serve(APP, "--request-buffer", "64KiB", "--limit-request-body", "0")
    total = 64 * MiB
    body = os.urandom(total)
    view = memoryview(body)
    sock = server.connect(timeout=30)
    try:
        sock.sendall(head("/hold?id=bp", f"Content-Length: {total}"))
        sock.setblocking(False)
        sent = 0

        def push():
            # Sends until the kernel takes no more (EAGAIN) or the body is all gone.
            nonlocal sent
            while sent < total:
                try:
                    sent += sock.send(view[sent : sent + MiB])
                except BlockingIOError:
                    return

        push()
        wait_for("the app's first message", lambda: progress(server, "bp")["messages"] >= 1)
        # Keep offering: once three pauses in a row let nothing more in, the client is stalled.
        idle = 0
        while idle < 3 and sent < total:
            time.sleep(0.2)
            before = sent
            push()
            idle = idle + 1 if sent == before else 0
        held = sent
        assert held < 32 * MiB, f"the server took {held} of {total} bytes while the app read nothing"
        assert progress(server, "bp")["messages"] == 1, "the app was meant to be holding the request"
        print(f"bytes accepted while the app held the request: {held}")

        assert get(server, "/release").status_code == 200
        sock.setblocking(True)
        sock.settimeout(30)
        sock.sendall(view[sent:])
        reply = Conn(sock=sock).read_response()
    finally:
        sock.close()
    assert reply.status == 200, reply
    seen = reply.json()
    assert_streamed_whole(seen, body)


# --- Expect: 100-continue -----------------------------------------------------------------


def test_an_answer_before_the_body_is_read_closes_the_connection(serve):
    """The app answers while most of the body is still unsent. The rest is dropped unread, so
    the head must say the connection closes: a client that reused it would send its next
    request into a connection the server is closing."""
    server = serve(APP, "--request-buffer", "64KiB")
    with Conn(server) as conn:
        conn.sock.sendall(head("/ignore", f"Content-Length: {1 * MiB}") + b"x" * 1000)
        reply = conn.read_response()
        assert reply.status == 200, reply
        assert reply.body == b"ignored"
        assert reply.headers.get("connection") == "close", reply
    still_serving(server)


def test_a_body_read_to_its_end_keeps_the_connection_for_the_next_request(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    body = os.urandom(1 * MiB)
    with Conn(server, timeout=30) as conn:
        conn.sock.sendall(head("/digest?id=reuse", f"Content-Length: {len(body)}") + body)
        reply = conn.read_response()
        assert reply.status == 200, reply
        assert reply.json()["sha256"] == sha(body)
        assert "connection" not in reply.headers, reply
        conn.sock.sendall(head("/ping", method="GET"))
        again = conn.read_response()
        assert (again.status, again.body) == (200, b"pong"), again


def test_expect_continue_unanswered_when_the_app_does_not_read(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    with Conn(server) as conn:
        conn.sock.sendall(head("/ignore", f"Content-Length: {1 * MiB}", "Expect: 100-continue"))
        # The body is never sent: the final response must come anyway, with no 100 before it.
        reply = conn.read_response()
        assert reply.status == 200, reply
        assert reply.body == b"ignored"
        assert b"100 Continue" not in reply.raw_head and b"100 Continue" not in conn.buf
    still_serving(server)


def test_expect_continue_answered_once_the_app_reads(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    for size in (10, 2 * MiB):
        body = os.urandom(size)
        with Conn(server) as conn:
            conn.sock.sendall(head(f"/digest?id=expect{size}", f"Content-Length: {size}", "Expect: 100-continue"))
            interim = conn.read_response()
            assert interim.status == 100, interim
            assert interim.raw_head.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
            conn.sock.sendall(body)
            final = conn.read_response()
        assert final.status == 200, final
        seen = final.json()
        assert seen["sha256"] == sha(body) and seen["total"] == size
        assert seen["more"][-1] is False and seen["types"] == ["http.request"] * seen["messages"]


def test_expect_continue_waits_for_the_apps_first_receive(serve):
    # The app is called at once but calls receive() only after /release: until then the
    # client must not be told to go on.
    server = serve(APP, "--request-buffer", "64KiB")
    body = os.urandom(300 * KiB)
    with Conn(server) as conn:
        conn.sock.sendall(head("/late?id=late", f"Content-Length: {len(body)}", "Expect: 100-continue"))
        wait_for("the app to be called", lambda: progress(server, "late").get("waiting"))
        time.sleep(0.3)
        conn.sock.setblocking(False)
        try:
            early = conn.sock.recv(65536)
        except BlockingIOError:
            early = b""
        conn.sock.settimeout(10)
        assert early == b"", f"the server answered before the app asked for the body: {early!r}"
        assert get(server, "/release").status_code == 200
        interim = conn.read_response()
        assert interim.status == 100, interim
        conn.sock.sendall(body)
        final = conn.read_response()
    assert final.status == 200, final
    assert final.json()["sha256"] == sha(body)


# --- bodies that fail ---------------------------------------------------------------------


def test_a_declared_body_over_the_limit_gets_413(serve):
    server = serve(APP, "--request-buffer", "64KiB", "--limit-request-body", "1MiB")
    body = os.urandom(2 * MiB)
    with Conn(server) as conn:
        conn.sock.sendall(head("/digest?id=declared", f"Content-Length: {len(body)}"))
        sender = Sender(conn.sock, body)
        sender.start()
        reply = conn.read_response()
        sender.join(15)
    assert reply.status == 413, reply
    still_serving(server)


def test_a_chunked_body_over_the_limit_gets_413_while_the_app_reads(serve):
    server = serve(APP, "--request-buffer", "64KiB", "--limit-request-body", "1MiB")
    body = os.urandom(2 * MiB)
    with Conn(server) as conn:
        conn.sock.sendall(head("/digest?id=chunked413", "Transfer-Encoding: chunked"))
        sender = Sender(conn.sock, chunked(body))
        sender.start()
        reply = conn.read_response()
        sender.join(15)
    assert reply.status == 413, reply
    seen = last(server, "chunked413")
    # The app was reading when the limit was crossed, and was told the request is over.
    assert seen["types"][-1] == "http.disconnect", seen
    assert 0 < seen["total"] <= 1 * MiB, seen
    still_serving(server)
    assert requests.post(server.url + "/digest", data=b"x" * 1000, timeout=10).status_code == 200


def test_a_body_cut_short_by_the_client_ends_in_http_disconnect(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    half = os.urandom(512 * KiB)
    sock = server.connect()
    sock.sendall(head("/digest?id=cut", f"Content-Length: {1 * MiB}") + half)
    sock.close()
    seen = last(server, "cut")
    assert seen["types"][-1] == "http.disconnect", seen
    assert seen["types"][:-1] == ["http.request"] * seen["messages"], seen
    assert all(seen["more"]), "no message may claim the body is complete"
    assert seen["total"] == len(half), seen
    still_serving(server)


def test_a_body_cut_short_while_the_app_is_not_reading_ends_in_http_disconnect(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    half = os.urandom(512 * KiB)
    sock = server.connect()
    sock.sendall(head("/hold?id=cut-held", f"Content-Length: {1 * MiB}") + half)
    wait_for("the app's first message", lambda: progress(server, "cut-held")["messages"] >= 1)
    sock.close()
    assert get(server, "/release").status_code == 200
    seen = last(server, "cut-held")
    assert seen["types"][-1] == "http.disconnect", seen
    assert all(seen["more"]), "no message may claim the body is complete"
    assert seen["total"] <= len(half), seen
    still_serving(server)


def test_a_stalled_body_gets_408_while_the_app_reads(serve):
    server = serve(APP, "--request-buffer", "64KiB", "--body-timeout", "1")
    part = os.urandom(100 * KiB)
    with Conn(server) as conn:
        conn.sock.sendall(head("/digest?id=stalled", f"Content-Length: {1 * MiB}") + part)
        # ... and nothing more: the server gives up after a second without body bytes.
        reply = conn.read_response()
    assert reply.status == 408, reply
    seen = last(server, "stalled")
    assert seen["types"][-1] == "http.disconnect", seen
    assert seen["total"] == len(part), seen
    still_serving(server)
    server.stop()
    assert "answered 408" in server.stderr, server.stderr


def test_a_body_that_stalls_after_the_response_began_keeps_its_status(serve):
    # Too late for a 408: the app has begun a 200, and is told http.disconnect instead.
    server = serve(APP, "--request-buffer", "64KiB", "--body-timeout", "1")
    part = os.urandom(100 * KiB)
    with Conn(server) as conn:
        conn.sock.sendall(head("/early?id=early", f"Content-Length: {1 * MiB}") + part)
        raw = conn._until(b"\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200"), raw
        conn.sock.settimeout(10)
        while True:
            try:
                conn._fill()
            except (EOFError, ConnectionResetError):
                break
    assert b"408" not in conn.buf and b"early" in conn.buf, conn.buf[:300]
    # The response ends without its last chunk: the client can tell it is incomplete.
    assert not conn.buf.endswith(b"0\r\n\r\n"), conn.buf[:300]
    seen = last(server, "early")
    assert seen["types"][-1] == "http.disconnect", seen
    assert seen["total"] == len(part), seen
    assert seen["send"].startswith("OSError"), "sending after the disconnect should fail"
    still_serving(server)


def test_a_broken_chunk_mid_body_gets_400_while_the_app_reads(serve):
    server = serve(APP, "--request-buffer", "64KiB")
    good = os.urandom(256 * KiB)
    with Conn(server) as conn:
        framed = chunked(good)
        conn.sock.sendall(head("/digest?id=broken", "Transfer-Encoding: chunked") + framed[: -len(b"0\r\n\r\n")])
        # Past the read-ahead: the app is running and has had part of the body.
        wait_for("the app to read part of the body", lambda: progress(server, "broken")["total"] > 0)
        conn.sock.sendall(b"zz\r\nnot a chunk\r\n")
        reply = conn.read_response()
    assert reply.status == 400, reply
    seen = last(server, "broken")
    assert seen["types"][-1] == "http.disconnect", seen
    assert 0 < seen["total"] <= len(good), seen
    still_serving(server)


# --- frameworks ---------------------------------------------------------------------------


def test_fastapi_request_body_gets_a_streamed_upload_whole(serve):
    server = serve("asgi_body_apps:fastapi_app", "--request-buffer", "64KiB")
    body = os.urandom(4 * MiB)
    response = requests.post(server.url + "/upload", data=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"total": len(body), "sha256": sha(body)}


def test_starlette_request_stream_gets_a_streamed_upload_whole(serve):
    server = serve("asgi_body_apps:starlette_app", "--request-buffer", "64KiB")
    body = os.urandom(4 * MiB)
    response = requests.post(server.url + "/stream", data=body, timeout=30)
    assert response.status_code == 200, response.text
    seen = response.json()
    assert seen["total"] == len(body) and seen["sha256"] == sha(body)
    assert seen["chunks"] > 1, "request.stream() should yield the body in pieces"
