"""--max-pending: requests, not connections, use capacity. Past the bound new requests get 503
with Retry-After at once; idle keep-alive connections (a proxy's pool) never count."""

import re
import resource
import shutil
import socket
import time
from datetime import datetime

import pytest

from conftest import Server
from test_http1 import RawConn, get
from test_lifecycle import wait_for_file

APP = "http_apps:app"


def raise_fd_limit(needed):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def test_past_max_pending_new_requests_get_503(serve, tmp_path):
    server = serve(APP, "--threads", "1", "--max-pending", "2", env={"HTTP_APPS_STATE_DIR": str(tmp_path)})
    busy = RawConn.open(server, timeout=30.0)
    others = []
    try:
        busy.send(get("/sleep?s=5&tag=busy"))
        wait_for_file(tmp_path / "busy.started", server.proc)
        # The only thread is busy for 5 s: two requests may wait, the rest are shed.
        for i in range(6):
            conn = RawConn.open(server, timeout=30.0)
            others.append(conn)
            conn.send(get(f"/queued/{i}"))
        responses = [conn.read_response() for conn in others]
        statuses = sorted(r.status for r in responses)
        assert statuses == [200, 200, 503, 503, 503, 503], statuses
        for r in responses:
            if r.status == 503:
                assert r.header("retry-after") == "1"
        assert busy.read_response().status == 200
    finally:
        busy.close()
        for conn in others:
            conn.close()


SHED_LINE = re.compile(r"^\[(\S+)\] \[\d+\] \[WARNING\] shed (\d+) requests? since the last such line", re.M)


def test_shedding_is_reported_once_a_second_with_the_count(serve, tmp_path):
    """The 503s are in the access log; the server log gets one line at once when shedding
    starts, then at most one a second, each saying how many were shed since the one before."""
    server = serve(APP, "--threads", "1", "--max-pending", "1", env={"HTTP_APPS_STATE_DIR": str(tmp_path)})
    busy = RawConn.open(server, timeout=30.0)
    waiting = RawConn.open(server, timeout=30.0)
    try:
        busy.send(get("/sleep?s=4&tag=busy"))
        wait_for_file(tmp_path / "busy.started", server.proc)
        waiting.send(get("/waiting"))
        time.sleep(0.3)
        shed, started = 0, time.monotonic()
        while time.monotonic() - started < 2.5:
            with RawConn.open(server) as conn:
                conn.send(get(f"/shed/{shed}"))
                assert conn.read_response().status == 503
            shed += 1
        elapsed = time.monotonic() - started
        assert busy.read_response().status == 200
        assert waiting.read_response().status == 200
    finally:
        busy.close()
        waiting.close()
    # The line for the last of them is due a second after the one before it.
    time.sleep(1.2)
    assert server.stop() == 0
    found = SHED_LINE.findall(server.stderr)
    assert sum(int(count) for _, count in found) == shed, (shed, server.stderr)
    # One at the first, then one a second while they last, and one for the rest.
    assert 2 <= len(found) <= int(elapsed) + 2, (elapsed, found)
    assert int(found[0][1]) == 1, found
    stamps = [datetime.fromisoformat(stamp.replace("Z", "+00:00")) for stamp, _ in found]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:])]
    assert all(gap >= 0.99 for gap in gaps), gaps
    assert len(SHED_LINE.findall(server.stderr)) == len(re.findall(r"shed \d+ request", server.stderr))


def test_idle_keep_alive_connections_do_not_use_capacity(serve):
    assert raise_fd_limit(2500) >= 2500
    server = serve(APP, "--threads", "1", "--max-pending", "2")
    pool = []
    try:
        # A proxy's pool: 1000 connections that each served a request and now wait.
        for i in range(1000):
            conn = RawConn(socket.create_connection(("127.0.0.1", server.port), timeout=10.0))
            pool.append(conn)
            conn.send(get(f"/warm/{i}"))
            assert conn.read_response().status == 200
        # Plus connections that were opened and never used.
        for _ in range(100):
            pool.append(RawConn(socket.create_connection(("127.0.0.1", server.port), timeout=10.0)))
        time.sleep(0.2)
        with RawConn.open(server) as fresh:
            fresh.send(get("/normal"))
            resp = fresh.read_response()
            assert resp.status == 200 and resp.body == b"GET /normal"
        # And the pooled connections are still good for more requests.
        for conn in pool[::97]:
            conn.send(get("/again"))
            assert conn.read_response().status == 200
    finally:
        for conn in pool:
            conn.close()


def test_the_server_raises_its_open_files_limit(tmp_path):
    """Started with a soft limit of 256 descriptors (hard 4096), it still holds 600 connections."""
    if not shutil.which("prlimit"):
        pytest.skip("prlimit (util-linux) is not installed")
    assert raise_fd_limit(1000) >= 1000
    server = Server(APP, "--threads", "1", prefix=["prlimit", "--nofile=256:4096", "--"]).wait_ready()
    conns = []
    try:
        for i in range(600):
            conn = RawConn(socket.create_connection(("127.0.0.1", server.port), timeout=10.0))
            conns.append(conn)
            conn.send(get(f"/n/{i}"))
            assert conn.read_response().status == 200, i
        limits = open(f"/proc/{server.proc.pid}/limits").read()
        line = next(l for l in limits.splitlines() if l.startswith("Max open files"))
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        for conn in conns:
            conn.close()
        server.stop()
