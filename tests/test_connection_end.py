"""When a connection ends, and what the client gets before it does.

- A connection ends with its response (and the unread rest of the body, for a bounded time),
  never when Python frees the request's objects.
- After a refusal with request bytes still coming, the client reads the whole answer instead of
  a reset.
- A client that reads nothing is given up on after --send-timeout, and the app's thread freed.
- Every byte an app produced before a short body was cut off reaches the client.
- Response header names go out as the app wrote them; hyper's own refusals look like
  coldbrew's.
- IPv4 clients of a dual-stack listener are plain IPv4 addresses.
"""

import socket
import threading
import time

import pytest

from conftest import Server, free_dual_stack_port, recv_until_closed

BODY = 256 * 1024


def read_response_head(sock, timeout=10.0):
    """One response head, and the bytes read after it; raises on a timeout or a reset."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed inside the head: {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def read_response(sock, timeout=10.0):
    """One response, head and Content-Length body; raises on a timeout or a reset."""
    head, rest = read_response_head(sock, timeout)
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed inside the body: {head!r} {rest!r}")
        rest += chunk
    return head, rest


def upload(path, framing, close):
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
    if close:
        head += "Connection: close\r\n"
    if framing == "length":
        return (head + f"Content-Length: {BODY}\r\n\r\n").encode() + b"u" * BODY
    chunk = b"u" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(BODY // len(chunk)))
    return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + body + b"0\r\n\r\n"


@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.parametrize(
    "app, path",
    [("connection_apps:cycle_app", "/cycle"), ("connection_apps:cycle_app", "/held"), ("connection_apps:flask_app", "/upload")],
    ids=["cycle", "held-for-good", "flask-abort"],
)
def test_a_connection_ends_with_its_response_not_when_python_frees_the_request(serve, app, path, framing):
    # The body is larger than the read-ahead, so the app gets it as a stream it never reads.
    server = serve(app, "--request-buffer", "1K")
    with server.connect() as sock:
        sock.sendall(upload(path, framing, close=True))
        head, _ = read_response(sock)
        assert head.startswith("HTTP/1.1 400"), head
        # The end of the connection follows the response; the app's objects are never freed.
        sock.settimeout(10)
        rest = recv_until_closed(sock)
        assert b"HTTP/1.1" not in rest
    # Nothing is left open for the stop to wait for.
    assert server.stop() == 0
    assert "graceful timeout" not in server.stderr, server.stderr


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_kept_alive_connection_with_an_unread_body_answers_or_ends(serve, framing):
    """Without Connection: close the server may drain the body and keep the connection, or close
    it; it must not leave it hanging until the request's objects are freed."""
    server = serve("connection_apps:cycle_app", "--request-buffer", "1K")
    with server.connect() as sock:
        sock.sendall(upload("/cycle", framing, close=False))
        head, _ = read_response(sock)
        assert head.startswith("HTTP/1.1 400"), head
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(10)
        rest = recv_until_closed(sock)
        assert rest == b"" or rest.startswith(b"HTTP/1.1 400"), rest[:200]
    assert server.stop() == 0
    assert "graceful timeout" not in server.stderr, server.stderr


def send_in_background(sock, data):
    def run():
        try:
            sock.sendall(data)
        except OSError:
            pass

    sender = threading.Thread(target=run, daemon=True)
    sender.start()
    return sender


@pytest.mark.parametrize(
    "request_head, status",
    [
        # Refused by coldbrew's checks for its declared length.
        (b"POST /cycle HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n", "413"),
        # Refused by coldbrew's checks for its head, body following.
        (b"POST /cycle HTTP/1.1\r\nHost: x\r\nHost: y\r\nContent-Length: 8000000\r\n\r\n", "400"),
        # Refused by hyper's parser, more bytes following.
        (b"POST /cycle HTTP/1.1\r\nHost: x\r\nBad Header\r\nContent-Length: 8000000\r\n\r\n", "400"),
    ],
    ids=["413-declared", "400-checks", "400-parser"],
)
def test_a_refusal_reaches_the_client_while_it_is_still_sending(serve, request_head, status):
    server = serve("connection_apps:cycle_app", "--limit-request-body", "1M")
    for _ in range(3):
        with server.connect() as sock:
            sock.sendall(request_head)
            # The client goes on sending the body it announced while the answer comes back; a
            # reset from a socket closed under unread bytes would destroy the answer.
            sender = send_in_background(sock, b"u" * 4_000_000)
            time.sleep(0.2)
            head, body = read_response(sock)
            assert head.startswith(f"HTTP/1.1 {status}"), head
            assert body.endswith(b"\n") and b":" in body, body
            # The server reads and drops the rest, so the client can finish sending, and then
            # the connection ends with a clean close, not a reset.
            sender.join(10)
            assert not sender.is_alive()
            sock.settimeout(10)
            assert sock.recv(65536) == b""


def test_every_byte_the_app_produced_reaches_the_client_before_a_short_body_is_cut(serve):
    """The app yields 5 of its declared 10 bytes: the client must get those 5, then the end."""
    server = serve("pep3333_apps:app", "--threads", "2")
    failures = []

    def exchange(rounds):
        for _ in range(rounds):
            with server.connect() as sock:
                sock.sendall(b"GET /generator-too-short HTTP/1.1\r\nHost: x\r\n\r\n")
                raw = recv_until_closed(sock)
            head, _, rest = raw.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200") or rest != b"01234":
                failures.append(raw)

    # Several clients at once, as under the load where the bytes used to go missing.
    clients = [threading.Thread(target=exchange, args=(40,)) for _ in range(4)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert failures == []


def test_a_client_that_reads_nothing_is_given_up_on_after_the_send_timeout(serve):
    server = serve("connection_apps:stream_app", "--send-timeout", "1", "--response-buffer", "64K")
    sock = socket.socket()
    # A small receive window, so the server's writes block soon.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((server.host, server.port))
    try:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(6)
        # The connection was closed: what the kernel buffered is there, then the end, far short
        # of the 64 MiB the app would have sent.
        received = recv_until_closed(sock, timeout=10)
        assert 0 < len(received) < 16 * 1024 * 1024
    finally:
        sock.close()
    assert server.stop() == 0
    assert "stream ended" in server.stdout, "the app's thread is still held by the stalled client"
    assert "--send-timeout" in server.stderr, server.stderr


def test_a_slow_reader_within_the_send_timeout_gets_everything(serve):
    server = serve("connection_apps:stream_app", "--send-timeout", "2", "--response-buffer", "64K")
    with server.connect() as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        total = 0
        sock.settimeout(10)
        while True:
            # Stalls shorter than the timeout, again and again.
            if total < 4 * 1024 * 1024:
                time.sleep(0.005)
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            total += len(chunk)
    assert total > 64 * 1024 * 1024


def test_response_header_names_go_out_as_the_app_wrote_them(serve):
    server = serve("connection_apps:case_app")
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = recv_until_closed(sock)
    head = raw.partition(b"\r\n\r\n")[0].decode()
    lines = head.split("\r\n")[1:]
    names = [line.partition(":")[0] for line in lines]
    for written in ["Content-Type", "ETag", "x-lower", "X-Request-ID", "WWW-Authenticate", "Set-Cookie", "set-cookie", "Content-Length"]:
        assert written in names, head
    # The server's own fields, in the case gunicorn and most servers use.
    assert "Server" in names and "Date" in names, head
    assert "Set-Cookie: a=1" in lines and "set-cookie: b=2" in lines, head


def test_header_case_survives_keep_alive_and_pipelining(serve):
    server = serve("connection_apps:case_app")
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 5 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = recv_until_closed(sock)
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 6
    assert raw.count(b"\r\nETag: \"v1\"\r\n") == 6
    assert raw.count(b"\r\nx-lower: 1\r\n") == 6


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", "400 Bad Request"),
        (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", "414 URI Too Long"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n", "431 Request Header Fields Too Large"),
    ],
    ids=["malformed-field", "long-target", "too-many-fields"],
)
def test_hypers_own_refusals_look_like_coldbrews(serve, request_bytes, status):
    server = serve("connection_apps:peer_app")
    with server.connect() as sock:
        sock.sendall(request_bytes)
        head, body = read_response(sock)
    assert head.startswith(f"HTTP/1.1 {status}\r\n"), head
    fields = {line.partition(":")[0]: line.partition(":")[2].strip() for line in head.split("\r\n")[1:]}
    assert fields["Server"] == "coldbrew"
    assert fields["Connection"] == "close"
    assert fields["Content-Type"] == "text/plain; charset=utf-8"
    assert "Date" in fields
    reason = status.split(" ", 1)[1]
    assert body.decode().startswith(f"{reason}: ") and body.endswith(b"\n"), body
    # The same shape as a refusal from coldbrew's own checks.
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n")
        own_head, own_body = read_response(sock)
    own_fields = {line.partition(":")[0] for line in own_head.split("\r\n")[1:]}
    assert own_fields == set(fields), (own_head, head)
    assert own_body.decode().startswith("Bad Request: ")


def test_ipv4_clients_of_a_dual_stack_listener_are_ipv4_addresses():
    port = free_dual_stack_port()
    server = Server("connection_apps:peer_app", "--bind", f"[::]:{port}", "--access-logfile", "-", port=port)
    try:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = recv_until_closed(sock)
    finally:
        server.stop()
    assert raw.endswith(b"\r\n\r\n127.0.0.1"), raw
    access = [line for line in server.stdout.splitlines() if '"GET / HTTP/1.1"' in line]
    assert access and access[0].startswith("127.0.0.1 "), server.stdout
    assert "::ffff:" not in server.stdout + server.stderr


def test_an_http2_stream_its_client_grants_no_window_is_given_up_on(serve):
    """On HTTP/2 a client can starve one stream of flow-control window while it goes on reading
    the connection, so the socket never fills; the stream's producer gives up after
    --send-timeout all the same, which frees the app's only thread, and the stream is reset
    instead of resumed once the client grants window again."""
    import h2.config
    import h2.connection
    import h2.events

    server = serve("connection_apps:stream_app", "--send-timeout", "1", "--response-buffer", "64K", "--threads", "1")
    sock = socket.create_connection((server.host, server.port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(":method", "GET"), (":path", "/stream"), (":scheme", "http"), (":authority", "x")], end_stream=True)
    sock.sendall(conn.data_to_send())
    state = {"received": 0, "unacknowledged": 0, "reset": None}

    def pump(seconds):
        deadline = time.monotonic() + seconds
        sock.settimeout(0.2)
        while time.monotonic() < deadline and state["reset"] is None:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    state["received"] += len(event.data)
                    state["unacknowledged"] += event.flow_controlled_length
                elif isinstance(event, h2.events.StreamReset):
                    state["reset"] = event.error_code
            sock.sendall(conn.data_to_send())

    try:
        # Data is read but never acknowledged: the window stays shut at the default 65,535.
        pump(4)
        assert 0 < state["received"] <= 65535
        # The one Python thread is free again: another request is served.
        with server.connect() as other:
            other.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            head, _ = read_response_head(other)
            assert head.startswith("HTTP/1.1 200"), head
        # Window again: the starved stream is reset, not resumed.
        conn.acknowledge_received_data(state["unacknowledged"], stream)
        sock.sendall(conn.data_to_send())
        pump(5)
        assert state["reset"] is not None, f"the stream went on: {state}"
        assert state["received"] < 16 * 1024 * 1024
    finally:
        sock.close()
    assert server.stop() == 0
    assert "--send-timeout" in server.stderr, server.stderr



def test_a_client_that_floods_after_a_refusal_holds_neither_the_io_thread_nor_its_socket(serve):
    """The graceful close reads what a refused client goes on sending, but for a bounded time,
    and never so greedily that other connections wait."""
    server = serve("connection_apps:peer_app", "--limit-request-body", "1K")
    flood = server.connect()
    flood.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n")
    ended = {}

    def send_forever():
        chunk = b"u" * 65536
        started = time.monotonic()
        try:
            while time.monotonic() - started < 20:
                flood.sendall(chunk)
        except OSError as err:
            ended["after"] = time.monotonic() - started
            ended["error"] = err

    sender = threading.Thread(target=send_forever, daemon=True)
    sender.start()
    try:
        time.sleep(0.5)
        # Meanwhile the server answers others as usual.
        with server.connect() as other:
            for _ in range(20):
                other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                head, body = read_response(other)
                assert head.startswith("HTTP/1.1 200") and body == b"127.0.0.1", head
        sender.join(25)
        # The server gave up on the flood well before the client would have stopped.
        assert "error" in ended, "the flooding client was never cut off"
        assert ended["after"] < 20
    finally:
        flood.close()
