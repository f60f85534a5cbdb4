"""HTTP/2 over cleartext with prior knowledge (h2c), as Cloud Run's end-to-end HTTP/2 speaks it,
on the same port as HTTP/1.1: real server processes and a real HTTP/2 client (the h2 package)."""

import base64
import json
import socket
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.errors
import h2.settings
import pytest

from test_http1 import RawConn, get

APP = "conformance_apps:app"


class H2Client:
    """A blocking HTTP/2 client over one socket, just enough for these tests."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.flush()
        self.responses = {}  # stream id -> {"headers": dict, "body": bytes, "ended": bool, "reset": code}
        self.goaway = None
        self.closed = False

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method, path, body=b"", headers=(), end=True):
        stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream, [
            (":method", method), (":path", path), (":scheme", "http"), (":authority", "example.test:8443"),
            *headers,
        ], end_stream=not body and end)
        if body:
            self.conn.send_data(stream, body, end_stream=end)
        self.responses[stream] = {"headers": {}, "body": b"", "ended": False, "reset": None}
        return stream

    def pump(self):
        """Reads one batch of frames; False once the server closed the connection."""
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            data = b""
        if not data:
            self.closed = True
            return False
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            # Frames after a GOAWAY (hyper pings to learn which streams the client saw).
            if self.goaway is None:
                raise
            self.closed = True
            return False
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                self.responses[event.stream_id]["headers"] = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                self.responses[event.stream_id]["body"] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.responses[event.stream_id]["ended"] = True
            elif isinstance(event, h2.events.StreamReset):
                if event.stream_id in self.responses:
                    self.responses[event.stream_id]["reset"] = event.error_code
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.flush()
        return True

    def wait(self, streams, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not all(self.responses[s]["ended"] or self.responses[s]["reset"] is not None for s in streams):
            assert time.monotonic() < deadline, "streams not answered in time"
            if not self.pump():
                break
        return [self.responses[s] for s in streams]

    def close(self):
        self.sock.close()


def echo(response):
    assert response["headers"].get(":status") == "200", response
    return json.loads(response["body"])


def test_h2c_prior_knowledge_reaches_the_wsgi_app(serve):
    server = serve(APP)
    client = H2Client(server.port)
    try:
        stream = client.request("GET", "/hello?x=1", headers=[("x-custom", "v")])
        [response] = client.wait([stream])
    finally:
        client.close()
    seen = echo(response)
    assert seen["method"] == "GET"
    assert (seen["path"], seen["query"]) == ("/hello", "x=1")
    assert seen["protocol"] == "HTTP/2"
    assert seen["headers"]["HTTP_HOST"] == "example.test:8443"
    assert seen["headers"]["HTTP_X_CUSTOM"] == "v"
    assert response["headers"]["server"] == "coldbrew"


def test_many_concurrent_streams_each_reach_the_app_correctly(serve):
    server = serve(APP, "--threads", "4")
    client = H2Client(server.port)
    try:
        streams = {}
        for i in range(100):
            body = f"payload-{i}".encode() * (i + 1)
            streams[client.request("POST", f"/item/{i}", body=body)] = (i, body)
        client.flush()
        responses = client.wait(list(streams))
    finally:
        client.close()
    for (i, body), response in zip(streams.values(), responses):
        seen = echo(response)
        assert seen["path"] == f"/item/{i}"
        assert base64.b64decode(seen["body_b64"]) == body


def test_http1_still_works_on_the_same_port(serve):
    server = serve(APP)
    with RawConn.open(server) as conn:
        conn.send(get("/one"))
        response = conn.read_response()
    assert response.status == 200
    assert json.loads(response.body)["protocol"] == "HTTP/1.1"


def test_http_1_refuses_the_h2_preface(serve):
    server = serve(APP, "--http", "1")
    client = H2Client(server.port, timeout=5)
    try:
        client.request("GET", "/")
        client.flush()
        while client.pump():
            pass
    finally:
        client.close()
    assert all(r["headers"].get(":status") != "200" for r in client.responses.values())
    with RawConn.open(server) as conn:
        conn.send(get("/__calls"))
        assert json.loads(conn.read_response().body)["calls"] == 0, "the app was called"


def test_http_2_only_refuses_http1(serve):
    server = serve(APP, "--http", "2")
    with server.connect(timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
    assert b"HTTP/1.1 200" not in data
    client = H2Client(server.port)
    try:
        [response] = client.wait([client.request("GET", "/fine")])
    finally:
        client.close()
    assert echo(response)["path"] == "/fine"


def test_rapid_reset_gets_goaway_and_the_server_keeps_serving(serve):
    # CVE-2023-44487: open streams and cancel them at once, over and over.
    server = serve(APP)
    client = H2Client(server.port)
    try:
        for _ in range(2000):
            if client.closed:
                break
            stream = client.request("GET", "/")
            client.conn.reset_stream(stream, error_code=h2.errors.ErrorCodes.CANCEL)
            try:
                client.flush()
            except (BrokenPipeError, ConnectionResetError):
                client.closed = True
                break
        deadline = time.monotonic() + 10
        while not client.closed and client.goaway is None and time.monotonic() < deadline:
            client.pump()
    finally:
        client.close()
    assert client.goaway is not None or client.closed, "the server never pushed back on rapid resets"
    if client.goaway is not None:
        assert client.goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    # Others are unaffected.
    other = H2Client(server.port)
    try:
        [response] = other.wait([other.request("GET", "/after")])
    finally:
        other.close()
    assert echo(response)["path"] == "/after"


def test_graceful_stop_sends_goaway_and_finishes_open_streams(serve):
    from hyperframe.frame import DataFrame, Frame, GoAwayFrame

    server = serve("http_apps:app", "--graceful-timeout", "5")
    client = H2Client(server.port)
    slow = client.request("GET", "/sleep?s=1")
    client.flush()
    time.sleep(0.3)
    server.proc.send_signal(15)
    # The h2 package treats GOAWAY as the end, while the server goes on with the open stream:
    # read the raw frames until the server closes.
    raw = b""
    while True:
        try:
            chunk = client.sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        raw += chunk
    client.close()
    frames = []
    while len(raw) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
        frame.parse_body(memoryview(raw[9:9 + length]))
        frames.append(frame)
        raw = raw[9 + length:]
    goaway = [i for i, f in enumerate(frames) if isinstance(f, GoAwayFrame)]
    data = [i for i, f in enumerate(frames) if isinstance(f, DataFrame) and f.stream_id == slow and f.data]
    assert goaway, "no GOAWAY"
    assert data and b"".join(frames[i].data for i in data) == b"slept"
    assert data[-1] > goaway[0], "the open stream should finish after the GOAWAY"
    assert server.stop() == 0, server.stderr


@pytest.mark.parametrize("value", ["3", "h2"])
def test_bad_http_option_is_a_config_error(serve, value):
    from conftest import Server

    bad = Server(APP, "--http", value)
    bad.proc.wait(30)
    assert bad.stop() == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("coldbrew: error: argument --http: invalid choice")
