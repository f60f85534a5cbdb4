"""The threading model: a fixed pool of Python threads fed by a queue, with socket I/O
kept off those threads (slow clients do not occupy a Python thread)."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_http1 import RawConn, get, post
from test_lifecycle import wait_for_file

APP = "http_apps:app"


def fetch(server, path, timeout=20.0):
    with RawConn.open(server, timeout=timeout) as conn:
        conn.send(get(path))
        return conn.read_response()


def run_concurrently(server, paths, timeout=20.0):
    """Send all requests at once (after a barrier); returns (responses, wall seconds)."""
    barrier = threading.Barrier(len(paths))

    def one(path):
        conn = RawConn.open(server, timeout=timeout)
        try:
            barrier.wait(timeout=timeout)
            conn.send(get(path))
            return conn.read_response()
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        start = time.monotonic()
        responses = list(pool.map(one, paths))
        wall = time.monotonic() - start
    return responses, wall


def test_requests_run_in_parallel_up_to_thread_count(serve):
    server = serve(APP, "--threads", "4")
    responses, wall = run_concurrently(server, ["/sleep?s=0.5"] * 4)
    assert [r.status for r in responses] == [200] * 4
    assert all(r.body == b"slept" for r in responses)
    assert wall < 1.5, f"4 x 0.5s requests on 4 threads took {wall:.2f}s: not parallel"


def test_single_thread_serialises_requests(serve):
    server = serve(APP, "--threads", "1")
    responses, wall = run_concurrently(server, ["/sleep?s=0.5"] * 4)
    assert [r.status for r in responses] == [200] * 4
    assert wall >= 1.95, f"4 x 0.5s requests on 1 thread took only {wall:.2f}s"


def test_requests_beyond_thread_count_queue_and_all_succeed(serve):
    server = serve(APP, "--threads", "2")
    paths = [f"/sleep?s=0.05&i={i}" for i in range(32)]
    responses, wall = run_concurrently(server, paths, timeout=30.0)
    statuses = [r.status for r in responses]
    assert statuses == [200] * 32, statuses
    assert all(r.body == b"slept" for r in responses)
    # 32 x 0.05s on 2 threads cannot take less than 16 x 0.05s.
    assert wall >= 0.75, f"32 queued requests finished in {wall:.2f}s: more than 2 ran at once"


@pytest.mark.parametrize(
    "size, response_buffer",
    [
        (512 * 1024, "1M"),
        # On loopback the kernel's send buffer alone can swallow 512 KiB (tcp_wmem max is
        # typically 4 MiB), so also use a body larger than any kernel buffering: only the
        # server's own response buffer can then free the Python thread.
        (6 * 1024 * 1024, "16M"),
    ],
    ids=["512K-in-1M", "6M-in-16M"],
)
def test_slow_reader_does_not_hold_a_python_thread(serve, tmp_path, size, response_buffer):
    server = serve(APP, "--threads", "1", "--response-buffer", response_buffer,
                   env={"HTTP_APPS_STATE_DIR": str(tmp_path)})
    # Client A: a tiny receive window, and it does not read.
    a = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    a.settimeout(10.0)
    a.connect(("127.0.0.1", server.port))
    conn_a = RawConn(a, timeout=10.0)
    try:
        conn_a.send(get(f"/big?n={size}&tag=big"))
        wait_for_file(tmp_path / "big.started", server.proc)
        time.sleep(0.2)  # let the app produce its body into the server

        # Client B on the only Python thread.
        start = time.monotonic()
        resp_b = fetch(server, "/from-b", timeout=5.0)
        elapsed = time.monotonic() - start
        assert resp_b.status == 200 and resp_b.body == b"GET /from-b"
        assert elapsed < 3.0, f"client B waited {elapsed:.2f}s behind a non-reading client"

        # A can still read its whole response afterwards.
        resp_a = conn_a.read_response()
        assert resp_a.status == 200
        assert len(resp_a.body) == size and resp_a.body == b"x" * size
    finally:
        conn_a.close()


def test_slow_uploader_does_not_hold_a_python_thread(serve):
    server = serve(APP, "--threads", "1", "--request-buffer", "256K")
    total = 100_000
    body = bytes(i % 251 for i in range(total))
    conn_a = RawConn.open(server, timeout=10.0)
    try:
        # Client A: headers and half the body, then stalls.
        conn_a.send(get("/echo-body", method="POST", headers=[f"Content-Length: {total}"]) + body[: total // 2])
        time.sleep(0.3)

        start = time.monotonic()
        resp_b = fetch(server, "/from-b", timeout=5.0)
        elapsed = time.monotonic() - start
        assert resp_b.status == 200 and resp_b.body == b"GET /from-b"
        assert elapsed < 3.0, f"client B waited {elapsed:.2f}s behind a stalled uploader"

        # A finishes its upload and gets it echoed intact.
        conn_a.send(body[total // 2:])
        resp_a = conn_a.read_response()
        assert resp_a.status == 200
        assert resp_a.body == body
    finally:
        conn_a.close()


def test_requests_served_on_fixed_set_of_threads(serve):
    server = serve(APP, "--threads", "2")
    idents = set()
    names = set()
    for i in range(50):
        # Fresh connections first, then one long-lived connection.
        resp = fetch(server, f"/ident?i={i}")
        assert resp.status == 200
        ident, name = resp.body.decode().split(" ", 1)
        idents.add(int(ident))
        names.add(name)
    with RawConn.open(server) as conn:
        for i in range(20):
            conn.send(get(f"/ident?k={i}"))
            ident, name = conn.read_response().body.decode().split(" ", 1)
            idents.add(int(ident))
            names.add(name)
    # Concurrent requests too: still the same threads.
    responses, _ = run_concurrently(server, ["/ident"] * 8)
    for resp in responses:
        ident, name = resp.body.decode().split(" ", 1)
        idents.add(int(ident))
        names.add(name)
    assert 1 <= len(idents) <= 2, f"requests ran on {len(idents)} distinct threads: {idents}"
    assert len(names) <= 2, names
