"""ASGI websockets over real sockets: the handshake, the scope, messages both ways, fragments,
protocol errors, limits, close codes, denial, keepalive, compression, backpressure, the
graceful stop, and FastAPI and Starlette apps.

Clients are the `websockets` library (a test dependency: requirements-test.txt needs
`websockets>=12`) and, where the framing itself is under test, a raw socket speaking RFC 6455
by hand (below). What the app saw is read from the JSON files tests/apps/asgi_ws_apps.py
writes into $WS_RECORD_DIR.
"""

import ast
import base64
import hashlib
import json
import os
import signal
import socket
import time
import zlib
from collections import namedtuple

import pytest
import requests

websockets = pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


# ------------------------------------------------------------------------------------------
# Helpers


def serve_ws(serve, tmp_path, *args, app="asgi_ws_apps:app"):
    return serve(app, *args, env={"WS_RECORD_DIR": str(tmp_path)})


def ws_connect(server, path, **kwargs):
    kwargs.setdefault("open_timeout", 10)
    kwargs.setdefault("close_timeout", 5)
    return connect(f"ws://127.0.0.1:{server.port}{path}", proxy=None, **kwargs)


def wait_record(directory, name, timeout=10.0):
    """The JSON the app recorded under `name`, once it exists."""
    path = directory / f"{name}.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"the app recorded no {name!r} within {timeout}s")


def read_record(directory, name):
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def mask(payload, key):
    if not payload:
        return b""
    n = len(payload)
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def encode_frame(opcode, payload=b"", fin=True, masked=True, rsv=0, key=None):
    head = bytearray([(0x80 if fin else 0) | (rsv << 4) | opcode])
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        head.append(bit | n)
    elif n < 65536:
        head.append(bit | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(bit | 127)
        head += n.to_bytes(8, "big")
    if masked:
        key = os.urandom(4) if key is None else key
        return bytes(head) + key + mask(payload, key)
    return bytes(head) + payload


def close_payload(code, reason=b""):
    return code.to_bytes(2, "big") + reason


Frame = namedtuple("Frame", "fin rsv opcode payload masked")
Response = namedtuple("Response", "status headers body")


class RawWebSocket:
    """A client speaking RFC 6455 by hand on a plain socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    @classmethod
    def open(cls, server, path, headers=(), key=None, version=b"13", rcvbuf=None, timeout=10.0):
        """Sends a handshake; returns (raw websocket, response). Only the head is read for a
        101; another response's body is read by its Content-Length."""
        sock = socket.socket()
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect((server.host, server.port))
        key = base64.b64encode(os.urandom(16)) if key is None else key
        lines = [b"GET " + path.encode() + b" HTTP/1.1", b"Host: 127.0.0.1:%d" % server.port,
                 b"Upgrade: websocket", b"Connection: Upgrade"]
        if key is not False:
            lines.append(b"Sec-WebSocket-Key: " + key)
        if version is not None:
            lines.append(b"Sec-WebSocket-Version: " + version)
        lines += list(headers)
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        ws = cls(sock)
        response = ws.read_response()
        if response.status == 101:
            expected = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()) if key else None
            ws.accept = expected
        return ws, response

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def _fill(self):
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("the server closed the connection")
        self.buf += data

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_response(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        end = self.buf.index(b"\r\n\r\n")
        head = bytes(self.buf[:end]).decode("latin-1")
        del self.buf[: end + 4]
        status_line, *header_lines = head.split("\r\n")
        status = int(status_line.split()[1])
        headers = []
        for line in header_lines:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        body = b""
        if status != 101:
            length = next((int(v) for n, v in headers if n == "content-length"), 0)
            body = self.read_exact(length)
        return Response(status, headers, body)

    def send(self, opcode, payload=b"", **kwargs):
        self.sock.sendall(encode_frame(opcode, payload, **kwargs))

    def read_frame(self):
        b0, b1 = self.read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(self.read_exact(2), "big")
        elif n == 127:
            n = int.from_bytes(self.read_exact(8), "big")
        masked = bool(b1 & 0x80)
        key = self.read_exact(4) if masked else None
        payload = self.read_exact(n)
        if masked:
            payload = mask(payload, key)
        return Frame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload, masked)

    def read_message(self, answer_pings=True):
        """The next data message as (opcode, payload), answering pings on the way; a close
        frame comes back as (CLOSE, payload)."""
        opcode, parts = None, []
        while True:
            frame = self.read_frame()
            assert not frame.masked, "a server must not mask its frames"
            if frame.opcode == PING:
                if answer_pings:
                    self.send(PONG, frame.payload)
                continue
            if frame.opcode == PONG:
                continue
            if frame.opcode == CLOSE:
                return CLOSE, frame.payload
            if opcode is None:
                opcode = frame.opcode
            parts.append(frame.payload)
            if frame.fin:
                return opcode, b"".join(parts)

    def read_close(self):
        """Reads to the server's close frame: its (code, reason)."""
        while True:
            opcode, payload = self.read_message()
            if opcode == CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                return code, payload[2:].decode()

    def read_to_eof(self):
        """Frames until the server closes the socket."""
        frames = []
        while True:
            try:
                frames.append(self.read_frame())
            except (EOFError, ConnectionResetError):
                return frames


def header(response, name):
    values = [v for n, v in response.headers if n == name]
    return values[0] if values else None


# ------------------------------------------------------------------------------------------
# 1. The scope and the handshake


def test_the_websocket_scope_holds_what_the_spec_names(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/sc%6Fpe?x=1&y=%20", headers=[
        b"X-Custom: Value", b"Sec-WebSocket-Protocol: chat, superchat", b"Sec-WebSocket-Protocol: v2.proto",
    ])
    with ws:
        assert response.status == 101, response
        assert header(response, "sec-websocket-accept") == ws.accept.decode()
        assert header(response, "upgrade").lower() == "websocket"
        assert "upgrade" in header(response, "connection").lower()
        # The app did not choose a subprotocol: none is announced.
        assert header(response, "sec-websocket-protocol") is None
        opcode, payload = ws.read_message()
        assert opcode == TEXT
        scope = ast.literal_eval(payload.decode())
        ws.send(CLOSE, close_payload(1000))
        assert ws.read_close() == (1000, "")
    assert scope["type"] == "websocket"
    assert scope["asgi"]["version"] == "3.0"
    assert scope["scheme"] == "ws"
    assert scope["http_version"] == "1.1"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == b"/sc%6Fpe"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == ""
    assert (b"x-custom", b"Value") in scope["headers"]
    assert (b"upgrade", b"websocket") in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert scope["subprotocols"] == ["chat", "superchat", "v2.proto"]
    assert isinstance(scope["subprotocols"], list)
    assert "websocket.http.response" in scope["extensions"]
    assert scope["has_method"] is False
    assert scope["client"][0] == "127.0.0.1"
    assert tuple(scope["server"]) == ("127.0.0.1", server.port)
    assert scope["first"] == {"type": "websocket.connect"}


def test_no_subprotocol_offered_gives_an_empty_list(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with ws_connect(server, "/scope") as ws:
        scope = ast.literal_eval(ws.recv(timeout=10))
    assert scope["subprotocols"] == []


# ------------------------------------------------------------------------------------------
# 2. accept: subprotocol and headers


def test_accept_with_a_subprotocol_and_headers(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with ws_connect(server, "/subprotocol", subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "superchat"
        assert ws.response.status_code == 101
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "superchat"
        assert ws.response.headers["X-Accepted-By"] == "asgi_ws_apps"
        assert ws.response.headers["Set-Cookie"] == "session=abc"
        assert ws.recv(timeout=10) == "offered ['chat', 'superchat']"


def test_accept_without_a_subprotocol_announces_none(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with ws_connect(server, "/subprotocol") as ws:
        assert ws.subprotocol is None
        assert "Sec-WebSocket-Protocol" not in ws.response.headers
        assert ws.recv(timeout=10) == "offered []"


# ------------------------------------------------------------------------------------------
# 3. Messages both ways


def test_text_and_binary_echo_keep_their_type(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with ws_connect(server, "/echo") as ws:
        ws.send("héllo wörld ☕")
        assert ws.recv(timeout=10) == "héllo wörld ☕"
        ws.send(b"\x00\x01\xffbinary")
        answer = ws.recv(timeout=10)
        assert isinstance(answer, bytes) and answer == b"\x00\x01\xffbinary"


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_empty_messages_echo_empty(serve, tmp_path, compression):
    # With permessage-deflate and context takeover, the websockets client sends an empty
    # message after another one as an RSV1 frame with no payload at all (the sync flush of
    # nothing, 00 00 ff ff, stripped as RFC 7692 7.2.1 says).
    server = serve_ws(serve, tmp_path, "--graceful-timeout", "2")
    echoed = []
    try:
        with ws_connect(server, "/echo", compression=compression, close_timeout=2) as ws:
            for message in ["a", "", b"", "b"]:
                ws.send(message)
                echoed.append(ws.recv(timeout=5))
    except (TimeoutError, ConnectionClosed) as exc:
        echoed.append(repr(exc))
    # Whatever happened, SIGTERM stops the server within its graceful budget.
    code = server.stop(timeout=6)
    assert echoed == ["a", "", b"", "b"]
    assert code == 0, f"the server did not stop on SIGTERM (exit {code})"


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_one_mebibyte_messages_echo_whole(serve, tmp_path, compression):
    server = serve_ws(serve, tmp_path)
    big_bytes = os.urandom(1 << 20)
    big_text = base64.b64encode(os.urandom(3 << 18)).decode()  # 1 MiB of text
    assert len(big_text) == 1 << 20
    with ws_connect(server, "/echo", max_size=None, compression=compression) as ws:
        ws.send(big_bytes)
        assert ws.recv(timeout=30) == big_bytes
        ws.send(big_text)
        assert ws.recv(timeout=30) == big_text


def test_many_small_messages_arrive_in_order(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    sent = [f"message {i}" if i % 2 else f"bytes {i}".encode() for i in range(1000)]
    with ws_connect(server, "/echo", max_queue=None) as ws:
        for message in sent:
            ws.send(message)
        received = [ws.recv(timeout=10) for _ in sent]
    assert received == sent


# ------------------------------------------------------------------------------------------
# 4. Fragments and protocol errors (raw frames)


def test_a_fragmented_text_message_is_reassembled(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    text = "fragmented ünïcode ☕ text".encode()
    cut = text.index("☕".encode()) + 1  # the second fragment ends inside the cup
    fragments = [text[:5], text[5:cut], text[cut:]]
    ws, response = RawWebSocket.open(server, "/echo")
    with ws:
        assert response.status == 101
        ws.send(TEXT, fragments[0], fin=False)
        ws.send(CONT, fragments[1], fin=False)
        # A control frame may come between fragments; it is answered at once.
        ws.send(PING, b"between")
        ws.send(CONT, fragments[2], fin=True)
        frame = ws.read_frame()
        assert (frame.opcode, frame.payload) == (PONG, b"between")
        assert ws.read_message() == (TEXT, text)
        ws.send(CLOSE, close_payload(1000))
        assert ws.read_close() == (1000, "")


def test_a_fragmented_binary_message_is_reassembled(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    data = os.urandom(70000)
    ws, response = RawWebSocket.open(server, "/echo")
    with ws:
        assert response.status == 101
        ws.send(BINARY, data[:10], fin=False)
        ws.send(CONT, data[10:66000], fin=False)
        ws.send(CONT, data[66000:], fin=True)
        assert ws.read_message() == (BINARY, data)
        ws.send(CLOSE, close_payload(1000))
        assert ws.read_close() == (1000, "")


PROTOCOL_ERRORS = {
    # name: (frames to send, the close code expected)
    "invalid-utf8-text": ([(TEXT, b"ok \xff\xfe", {})], 1007),
    "invalid-utf8-in-a-fragment": ([(TEXT, b"valid ", {"fin": False}), (CONT, b"\xff\xfe", {"fin": False}),
                                    (CONT, b"end", {})], 1007),
    "utf8-cut-at-the-end": ([(TEXT, b"ab", {"fin": False}), (CONT, b"\xc3", {})], 1007),
    "unmasked-frame": ([(TEXT, b"hello", {"masked": False})], 1002),
    "rsv1-without-extension": ([(TEXT, b"hello", {"rsv": 4})], 1002),
    "rsv2": ([(BINARY, b"hello", {"rsv": 2})], 1002),
    "rsv3": ([(BINARY, b"hello", {"rsv": 1})], 1002),
    "continuation-without-start": ([(CONT, b"orphan", {})], 1002),
    "new-message-mid-fragments": ([(TEXT, b"one", {"fin": False}), (TEXT, b"two", {})], 1002),
    "fragmented-control-frame": ([(PING, b"x", {"fin": False})], 1002),
    "control-frame-over-125-bytes": ([(PING, b"p" * 126, {})], 1002),
    # RFC 6455 5.2: an unknown opcode fails the connection, a protocol error (1002; Autobahn
    # 4.1.x / 4.2.x expect 1002). 1003 is for a message type the endpoint does not accept.
    "reserved-data-opcode-3": ([(0x3, b"?", {})], 1002),
    "reserved-control-opcode-11": ([(0xB, b"?", {})], 1002),
    "close-with-a-1-byte-payload": ([(CLOSE, b"\x03", {})], 1002),
    "close-with-reserved-code-1005": ([(CLOSE, close_payload(1005), {})], 1002),
    "close-with-code-999": ([(CLOSE, close_payload(999), {})], 1002),
    "close-with-code-5000": ([(CLOSE, close_payload(5000), {})], 1002),
}


@pytest.mark.parametrize("case", sorted(PROTOCOL_ERRORS))
def test_a_protocol_error_closes_with_its_code(serve, tmp_path, case):
    frames, code = PROTOCOL_ERRORS[case]
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/echo?rec=bad")
    with ws:
        assert response.status == 101
        # A message first, to show the connection worked before the error.
        ws.send(TEXT, b"before")
        assert ws.read_message() == (TEXT, b"before")
        for opcode, payload, kwargs in frames:
            ws.send(opcode, payload, **kwargs)
        received = ws.read_close()
        assert received[0] == code, received
        # After the close the server ends the connection.
        assert ws.read_to_eof() == []
    told = wait_record(tmp_path, "bad")
    assert told["code"] == code, told
    # The server goes on.
    with ws_connect(server, "/echo") as client:
        client.send("after")
        assert client.recv(timeout=10) == "after"


def test_a_close_reason_that_is_not_utf8_fails_the_connection(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/echo?rec=bad")
    with ws:
        assert response.status == 101
        ws.send(CLOSE, close_payload(1000, b"\xff\xfe"))
        code, _ = ws.read_close()
        # RFC 6455 7.4.1: 1007 for data inconsistent with its type; 1002 is also a failure.
        assert code in (1002, 1007), code
        assert ws.read_to_eof() == []
    assert wait_record(tmp_path, "bad")["code"] in (1002, 1007)


def test_an_empty_close_is_told_to_the_app_as_1005(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/echo?rec=empty-close")
    with ws:
        assert response.status == 101
        ws.send(CLOSE, b"")
        frame = ws.read_frame()
        assert frame.opcode == CLOSE
        assert frame.payload in (b"", close_payload(1000)), frame
        assert ws.read_to_eof() == []
    assert wait_record(tmp_path, "empty-close")["code"] == 1005


def test_frames_sent_with_the_handshake_are_not_lost(serve, tmp_path):
    # Frames that share a packet with the handshake, before the 101, are bytes hyper has read
    # past the request head; the server hands them on to the websocket (http/upgrade.rs's
    # Switched) and they must arrive as sent. (RFC 6455 4.1 has a client wait for the 101,
    # so this is a client in a hurry; the server must not garble its bytes all the same.)
    # The masking keys are fixed so that the masked bytes hold an LF (0x0A) with no CR before
    # it, as about one random key in 30 does: bytes the HTTP head checks must not touch.
    server = serve_ws(serve, tmp_path)
    key = base64.b64encode(os.urandom(16))
    first = encode_frame(TEXT, b"early one", key=b"\x11\x6b\x22\x33")  # 'a' ^ 0x6b == 0x0a
    second = encode_frame(BINARY, b"early\ntwo", key=b"\x00\x00\x00\x00")
    assert b"\n" in first and b"\r\n" not in first
    with server.connect() as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + first + second
        )
        ws = RawWebSocket(sock)
        assert ws.read_response().status == 101
        assert ws.read_message() == (TEXT, b"early one")
        assert ws.read_message() == (BINARY, b"early\ntwo")
        ws.send(CLOSE, close_payload(1000))
        assert ws.read_close() == (1000, "")


def test_frames_sent_right_after_the_101_arrive_as_sent(serve, tmp_path):
    # The same frames from a client that waits for the 101, as RFC 6455 4.1 says.
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/echo")
    with ws:
        assert response.status == 101
        ws.sock.sendall(encode_frame(TEXT, b"early one", key=b"\x11\x6b\x22\x33")
                        + encode_frame(BINARY, b"early\ntwo", key=b"\x00\x00\x00\x00"))
        assert ws.read_message() == (TEXT, b"early one")
        assert ws.read_message() == (BINARY, b"early\ntwo")
        ws.send(CLOSE, close_payload(1000))
        assert ws.read_close() == (1000, "")


def test_a_keep_alive_connection_upgrades_after_a_plain_request(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    key = base64.b64encode(os.urandom(16))
    with server.connect() as sock:
        ws = RawWebSocket(sock)
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        first = ws.read_response()
        assert first.status == 200 and first.body == b"plain http on /echo"
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        second = ws.read_response()
        assert second.status == 101, second
        assert header(second, "sec-websocket-accept") == base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        ws.send(TEXT, b"upgraded")
        assert ws.read_message() == (TEXT, b"upgraded")
        ws.send(CLOSE, close_payload(1000))
        assert ws.read_close() == (1000, "")


def test_many_websockets_at_once_on_one_loop(serve, tmp_path):
    import concurrent.futures

    server = serve_ws(serve, tmp_path)

    def talk(n):
        with ws_connect(server, "/echo") as ws:
            got = []
            for i in range(20):
                ws.send(f"{n}-{i}")
                got.append(ws.recv(timeout=10))
            return got

    # All open at once: each holds its connection while the others talk.
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(talk, range(32)))
    assert results == [[f"{n}-{i}" for i in range(20)] for n in range(32)]


def test_a_client_that_never_answers_the_apps_close_is_dropped(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/close-4000?rec=app-close")
    with ws:
        assert response.status == 101
        assert ws.read_message() == (TEXT, b"closing")
        assert ws.read_close() == (4000, "bye")
        # No answering close: the server gives up on the closing handshake and hangs up.
        assert ws.read_to_eof() == []
    assert wait_record(tmp_path, "app-close")["type"] == "websocket.disconnect"


# ------------------------------------------------------------------------------------------
# 5. --ws-max-size


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_a_message_over_ws_max_size_closes_with_1009(serve, tmp_path, compression):
    server = serve_ws(serve, tmp_path, "--ws-max-size", "1024")
    with ws_connect(server, "/echo?rec=big", compression=compression) as ws:
        ws.send("x" * 1024)  # exactly the limit is allowed
        assert ws.recv(timeout=10) == "x" * 1024
        # With compression the 2000 bytes travel as a few: the limit is on the message.
        ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None, "the server sent no close frame"
    assert closed.value.rcvd.code == 1009
    told = wait_record(tmp_path, "big")
    assert told["code"] == 1009, told


def test_fragments_adding_up_over_ws_max_size_close_with_1009(serve, tmp_path):
    server = serve_ws(serve, tmp_path, "--ws-max-size", "1024")
    ws, response = RawWebSocket.open(server, "/echo?rec=big")
    with ws:
        assert response.status == 101
        ws.send(BINARY, b"a" * 500, fin=False)
        ws.send(CONT, b"b" * 500, fin=False)
        ws.send(CONT, b"c" * 500, fin=True)
        assert ws.read_close()[0] == 1009
    assert wait_record(tmp_path, "big")["code"] == 1009


def test_a_frame_header_announcing_too_much_is_refused_before_its_payload(serve, tmp_path):
    # Only the header is sent: the server must refuse on the announced length, without
    # waiting for (or allocating) the payload.
    server = serve_ws(serve, tmp_path, "--ws-max-size", "1024")
    ws, response = RawWebSocket.open(server, "/echo?rec=big")
    with ws:
        assert response.status == 101
        ws.sock.sendall(bytes([0x82, 0x80 | 127]) + (1 << 62).to_bytes(8, "big") + b"\0\0\0\0")
        assert ws.read_close()[0] == 1009
    assert wait_record(tmp_path, "big")["code"] == 1009


def test_a_huge_frame_header_under_the_default_limit_is_refused(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/echo?rec=big")
    with ws:
        assert response.status == 101
        # 17 MiB announced, over the default 16 MiB --ws-max-size.
        ws.sock.sendall(bytes([0x82, 0x80 | 127]) + (17 << 20).to_bytes(8, "big") + b"\0\0\0\0")
        assert ws.read_close()[0] == 1009
    assert wait_record(tmp_path, "big")["code"] == 1009


# ------------------------------------------------------------------------------------------
# 6. Close codes both ways


def test_the_clients_close_code_and_reason_reach_the_app(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with ws_connect(server, "/echo?rec=client-close") as ws:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        ws.close(4001, "reason")
        # The server answered the close with the same code.
        assert ws.close_code == 4001
    told = wait_record(tmp_path, "client-close")
    assert told == {"code": 4001, "reason": "reason"}


def test_the_apps_close_code_and_reason_reach_the_client(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with ws_connect(server, "/close-4000?rec=app-close") as ws:
        assert ws.recv(timeout=10) == "closing"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "bye")
    told = wait_record(tmp_path, "app-close")
    assert told["type"] == "websocket.disconnect"


def test_the_apps_close_comes_in_a_raw_close_frame(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/close-4000")
    with ws:
        assert response.status == 101
        assert ws.read_message() == (TEXT, b"closing")
        assert ws.read_close() == (4000, "bye")
        ws.send(CLOSE, close_payload(4000))
        assert ws.read_to_eof() == []


# ------------------------------------------------------------------------------------------
# 7. Denials and errors


def test_closing_before_accept_answers_403(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, "/deny-close?rec=denied")
    assert refused.value.response.status_code == 403
    assert wait_record(tmp_path, "denied") == {"type": "websocket.disconnect"}


def test_returning_without_accepting_answers_403(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, "/deny-return")
    assert refused.value.response.status_code == 403
    server.stop()
    assert "returned without accepting the websocket; answered 403" in server.stderr


def test_raising_before_accept_answers_500_with_a_traceback(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, "/raise-before")
    assert refused.value.response.status_code == 500
    with ws_connect(server, "/echo") as ws:
        ws.send("still serving")
        assert ws.recv(timeout=10) == "still serving"
    server.stop()
    assert "error in ASGI app for websocket" in server.stderr
    assert "answered 500" in server.stderr
    assert "Traceback (most recent call last)" in server.stderr
    assert "RuntimeError: raised before accept" in server.stderr


def test_raising_after_accept_closes_with_1011_with_a_traceback(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with ws_connect(server, "/raise-after") as ws:
        assert ws.recv(timeout=10) == "accepted"
        ws.send("make it raise")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1011
    with ws_connect(server, "/echo") as ws:
        ws.send("still serving")
        assert ws.recv(timeout=10) == "still serving"
    assert requests.get(server.url + "/echo", timeout=10).status_code == 200
    server.stop()
    assert "closed with 1011" in server.stderr
    assert "Traceback (most recent call last)" in server.stderr
    assert "ValueError: raised after accept" in server.stderr


# ------------------------------------------------------------------------------------------
# 8. The websocket.http.response extension


def test_a_denial_response_with_status_headers_and_a_two_chunk_body(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, "/http-response")
    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["X-Denied"] == "yes"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="ws"'
    assert response.body == b"no token, no websocket"


def test_a_denial_response_on_a_raw_socket(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/http-response")
    with ws:
        assert response.status == 401
        assert header(response, "x-denied") == "yes"
        assert header(response, "content-type") == "text/plain"
        assert header(response, "sec-websocket-accept") is None
        assert response.body == b"no token, no websocket"


# ------------------------------------------------------------------------------------------
# 9. Keepalive


def test_the_server_pings_and_answered_pings_keep_the_connection(serve, tmp_path):
    server = serve_ws(serve, tmp_path, "--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5")
    ws, response = RawWebSocket.open(server, "/echo")
    with ws:
        assert response.status == 101
        payloads = []
        while len(payloads) < 4:
            frame = ws.read_frame()
            assert frame.opcode == PING, frame
            assert not frame.masked
            payloads.append(frame.payload)
            ws.send(PONG, frame.payload)
        assert len(set(payloads)) == 4, "each ping carries its own payload"
        # Four answered pings span more than one ping timeout: the connection still works.
        ws.send(TEXT, b"alive")
        assert ws.read_message() == (TEXT, b"alive")
        ws.send(CLOSE, close_payload(1000))
        assert ws.read_close() == (1000, "")


def test_the_websockets_client_answers_the_pings_by_itself(serve, tmp_path):
    server = serve_ws(serve, tmp_path, "--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5")
    with ws_connect(server, "/echo", ping_interval=None) as ws:
        time.sleep(2)
        ws.send("alive")
        assert ws.recv(timeout=10) == "alive"


def test_a_client_that_never_answers_pings_is_dropped_and_the_app_told_1006(serve, tmp_path):
    server = serve_ws(serve, tmp_path, "--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5")
    ws, response = RawWebSocket.open(server, "/echo?rec=silent")
    with ws:
        assert response.status == 101
        frames = ws.read_to_eof()
    assert frames and frames[0].opcode == PING, frames
    assert wait_record(tmp_path, "silent")["code"] == 1006


# ------------------------------------------------------------------------------------------
# 10. permessage-deflate


def test_permessage_deflate_is_negotiated_when_offered(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    text = "coldbrew, slowly steeped. " * 4000  # ~100 KiB, very compressible
    with ws_connect(server, "/echo") as ws:
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        for _ in range(3):
            ws.send(text)
            assert ws.recv(timeout=10) == text


def test_an_empty_compressed_frame_after_a_message_is_an_empty_message(serve, tmp_path):
    # RFC 7692 7.2.3.6: an empty message may be sent compressed as an RSV1 frame with an empty
    # payload. Raw frames: deflate negotiated; a text "a" (uncompressed); then a text frame
    # with RSV1 set and no payload.
    server = serve_ws(serve, tmp_path, "--graceful-timeout", "2")
    ws, response = RawWebSocket.open(server, "/echo?rec=empty", timeout=5,
                                     headers=[b"Sec-WebSocket-Extensions: permessage-deflate"])
    outcome = []
    with ws:
        assert response.status == 101
        assert header(response, "sec-websocket-extensions").startswith("permessage-deflate")
        ws.send(TEXT, b"a")
        frame = ws.read_frame()
        assert frame.opcode == TEXT
        inflate = zlib.decompressobj(-15)
        tail = b"\x00\x00\xff\xff"
        assert (inflate.decompress(frame.payload + tail) if frame.rsv == 4 else frame.payload) == b"a"
        ws.send(TEXT, b"", rsv=4)
        try:
            frame = ws.read_frame()
            outcome.append((frame.opcode, inflate.decompress(frame.payload + tail) if frame.rsv == 4 else frame.payload))
            ws.send(CLOSE, close_payload(1000))
            outcome.append(ws.read_close())
        except (socket.timeout, EOFError) as exc:
            outcome.append(repr(exc))
    code = server.stop(timeout=6)
    assert outcome == [(TEXT, b""), (1000, "")]
    assert code == 0, f"the server did not stop on SIGTERM (exit {code})"
    assert read_record(tmp_path, "empty") == {"code": 1000, "reason": ""}


def test_no_extension_without_compression(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    with ws_connect(server, "/echo", compression=None) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        ws.send("plain")
        assert ws.recv(timeout=10) == "plain"


def test_the_servers_messages_really_are_compressed(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    text = ("coldbrew, slowly steeped. " * 4000).encode()
    ws, response = RawWebSocket.open(server, "/echo", headers=[b"Sec-WebSocket-Extensions: permessage-deflate"])
    with ws:
        assert response.status == 101
        assert header(response, "sec-websocket-extensions").startswith("permessage-deflate")
        ws.send(TEXT, text)  # a client may send a message uncompressed (RSV1 clear)
        frame = ws.read_frame()
        assert frame.opcode == TEXT and frame.fin
        assert frame.rsv == 4, "the echo should be compressed (RSV1)"
        assert len(frame.payload) < len(text) // 10
        assert zlib.decompressobj(-15).decompress(frame.payload + b"\x00\x00\xff\xff") == text


# ------------------------------------------------------------------------------------------
# 11. Invalid handshakes


def test_an_unsupported_version_gets_426_naming_13(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/echo", version=b"8")
    with ws:
        assert response.status == 426, response
        assert header(response, "sec-websocket-version") == "13"
    server.stop()
    assert "an invalid websocket handshake; answered 426" in server.stderr


def test_a_missing_key_gets_400(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/echo", key=False)
    with ws:
        assert response.status == 400, response


def test_a_handshake_without_connection_upgrade_gets_400(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    key = base64.b64encode(os.urandom(16))
    with server.connect() as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        response = RawWebSocket(sock).read_response()
    assert response.status == 400, response


def test_a_plain_get_to_the_websocket_route_is_http(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    response = requests.get(server.url + "/echo", timeout=10)
    assert response.status_code == 200
    assert response.text == "plain http on /echo"


# ------------------------------------------------------------------------------------------
# 12. Backpressure


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_does_not_read_holds_the_apps_send_back(serve, tmp_path):
    server = serve_ws(serve, tmp_path, "--response-buffer", "256KiB")
    before = rss_kib(server.proc.pid)
    ws, response = RawWebSocket.open(server, "/flood", rcvbuf=65536, timeout=30)
    with ws:
        assert response.status == 101
        # Wait, not reading, until the app's count stops moving.
        wait_record(tmp_path, "flood")
        last = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.3)
            sent = read_record(tmp_path, "flood")["sent"]
            if sent == last:
                break
            last = sent
        stalled = read_record(tmp_path, "flood")["sent"]
        grown = rss_kib(server.proc.pid) - before
        assert stalled < 200, f"the app sent {stalled} of 1024 64 KiB messages to a client that reads nothing"
        assert grown < 32 * 1024, f"the server grew by {grown} KiB"
        # Now read: everything arrives, whole and in order.
        for i in range(1024):
            opcode, payload = ws.read_message()
            assert opcode == BINARY
            assert len(payload) == 65536 and payload[0] == payload[-1] == i % 256, i
        # The app records a send after it returns: wait for the last one's record.
        deadline = time.monotonic() + 10
        while read_record(tmp_path, "flood")["sent"] != 1024 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert read_record(tmp_path, "flood")["sent"] == 1024
        ws.send(CLOSE, close_payload(1000))
        assert ws.read_close() == (1000, "")


def test_a_client_that_floods_an_app_that_does_not_read_is_held_back(serve, tmp_path):
    # 256 messages of 1 MiB to an app that reads nothing: the server stops reading after a
    # few, so TCP stops the client; once the app reads, all of them arrive.
    server = serve_ws(serve, tmp_path)
    before = rss_kib(server.proc.pid)
    ws, response = RawWebSocket.open(server, "/hold?rec=held", timeout=30)
    message = encode_frame(BINARY, b"m" * (1 << 20), masked=False)
    # A zero masking key leaves the payload as it is (and costs nothing to apply).
    message = bytes([message[0], message[1] | 0x80]) + message[2:10] + b"\0\0\0\0" + message[10:]
    with ws:
        assert response.status == 101
        assert ws.read_message() == (TEXT, b"holding")
        ws.sock.settimeout(1.0)
        sent = 0
        total = 256 * len(message)
        whole = message * 16
        try:
            while sent < total:
                view = memoryview(whole)[sent % len(whole):]
                sent += ws.sock.send(view[: total - sent])
        except socket.timeout:
            pass
        grown = rss_kib(server.proc.pid) - before
        assert sent < total // 2, f"the server took {sent >> 20} MiB from a client whose app reads nothing"
        assert grown < 64 * 1024, f"the server grew by {grown} KiB"
        assert requests.get(server.url + "/release", timeout=10).status_code == 200
        ws.sock.settimeout(30)
        while sent < total:
            view = memoryview(whole)[sent % len(whole):]
            sent += ws.sock.send(view[: total - sent])
        ws.send(CLOSE, close_payload(1000))
        assert ws.read_close() == (1000, "")
    told = wait_record(tmp_path, "held")
    assert told == {"count": 256, "bytes": 256 << 20, "code": 1000}


# ------------------------------------------------------------------------------------------
# 13. A client that leaves without a close frame


def test_a_client_that_drops_the_socket_leaves_the_app_1006(serve, tmp_path):
    server = serve_ws(serve, tmp_path)
    ws, response = RawWebSocket.open(server, "/echo?rec=dropped")
    with ws:
        assert response.status == 101
        ws.send(TEXT, b"hello")
        assert ws.read_message() == (TEXT, b"hello")
    told = wait_record(tmp_path, "dropped")
    assert told["code"] == 1006, told


# ------------------------------------------------------------------------------------------
# 14. The graceful stop


def test_sigterm_closes_open_websockets_with_1001_then_runs_the_lifespan_shutdown(serve, tmp_path):
    server = serve_ws(serve, tmp_path, "--graceful-timeout", "4")
    with ws_connect(server, "/echo?rec=stopped") as ws:
        ws.send("before the stop")
        assert ws.recv(timeout=10) == "before the stop"
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=15)
        waited = time.monotonic() - started
    assert closed.value.rcvd is not None, "the server sent no close frame"
    assert closed.value.rcvd.code == 1001
    # The close waits for half the graceful budget (2 s of 4): it cannot come sooner.
    assert waited >= 1.5, waited
    assert server.proc.wait(timeout=15) == 0
    server.stop()
    told = wait_record(tmp_path, "stopped", timeout=1)
    assert told["code"] == 1001, told
    assert read_record(tmp_path, "lifespan-shutdown") == {"ran": True}, server.stderr


# ------------------------------------------------------------------------------------------
# 15. Frameworks, served as a user serves them


def test_fastapi_websocket(serve):
    pytest.importorskip("fastapi")
    server = serve("asgi_fastapi:app")
    with ws_connect(server, "/ws?greeting=hi") as ws:
        assert ws.recv(timeout=10) == "hi"
        for word in ["tea", "coffee", "ünï"]:
            ws.send(word)
            assert ws.recv(timeout=10) == f"echo: {word}"
        ws.close(1000)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        codes = requests.get(server.url + "/ws/disconnects", timeout=10).json()["codes"]
        if codes:
            break
        time.sleep(0.05)
    assert codes == [1000]
    # A websocket to a route that has none is denied.
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(server, "/nope")
    assert refused.value.response.status_code == 403
    # The HTTP routes go on.
    assert requests.get(server.url + "/items/7?q=x", timeout=10).json() == {"item_id": 7, "q": "x"}


def test_starlette_websocket_route(serve):
    pytest.importorskip("starlette")
    server = serve("asgi_starlette:app")
    with ws_connect(server, "/ws/lobby", subprotocols=["chat"]) as ws:
        assert ws.subprotocol == "chat"
        ws.send("hi")
        assert ws.recv(timeout=10) == "lobby: HI"
        ws.send(b"abc")
        assert ws.recv(timeout=10) == b"cba"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        codes = requests.get(server.url + "/ws-disconnects", timeout=10).json()["codes"]
        if codes:
            break
        time.sleep(0.05)
    assert codes == [1000]
    assert requests.get(server.url + "/hello/world?q=1", timeout=10).json() == {"hello": "world", "q": "1"}
