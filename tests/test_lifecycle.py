"""Readiness, graceful shutdown and error handling of a real coldbrew process."""

import os
import re
import signal
import socket
import threading
import time

import pytest

from test_http1 import RawConn, get

APP = "http_apps:app"


def wait_for_file(path, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return
        assert proc.poll() is None, "server exited while waiting for the app"
        time.sleep(0.01)
    raise TimeoutError(f"{path} did not appear within {timeout}s")


def try_connect(port, timeout=1.0):
    """'refused', 'reset', or 'open' (the socket is closed again right away).

    'reset' is a connection that reached the listen queue just as the listener closed: the
    kernel resets it. It was not served, but the caller should try again to see 'refused'.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"


def wait_exit(proc, timeout):
    """Seconds until proc exits, or None if it is still running after timeout."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return time.monotonic() - start
        time.sleep(0.01)
    return None


class InFlight(threading.Thread):
    """Sends one request on its own connection and records the response (or the error)."""

    def __init__(self, server, path, timeout=40.0):
        super().__init__(daemon=True)
        self.conn = RawConn.open(server, timeout=timeout)
        self.path = path
        self.response = None
        self.error = None

    def run(self):
        try:
            self.conn.send(get(self.path))
            self.response = self.conn.read_response()
        except Exception as err:  # noqa: BLE001 - reported by the test
            self.error = err
        finally:
            self.conn.close()


# --------------------------------------------------------------------------------------
# Readiness
# --------------------------------------------------------------------------------------


def test_port_opens_only_after_slow_import(serve):
    spawned = time.time()
    server = serve("http_slow_import:app", ready=False)
    refused = 0
    first_open = None
    resp = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.proc.poll() is None, "server exited during startup"
        try:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5.0)
        except ConnectionRefusedError:
            refused += 1
            time.sleep(0.02)
            continue
        first_open = time.time()
        # The very first accepted connection is served.
        with RawConn(sock, timeout=10.0) as conn:
            conn.send(get("/"))
            resp = conn.read_response()
            answered = time.time()
        break
    assert first_open is not None, "port never opened"
    assert resp.status == 200 and resp.body == b"ready"

    server.stop()
    found = re.search(r"import finished at (\d+\.\d+)", server.stderr)
    assert found, server.stderr
    import_done = float(found.group(1))

    assert refused > 0, "no connection was refused while the app was importing"
    assert first_open - spawned >= 2.0, f"port open {first_open - spawned:.2f}s after spawn"
    # The port opened only after the import finished, so no request waited on it.
    assert first_open >= import_done, f"connect at {first_open:.3f} before import end {import_done:.3f}"
    assert answered - first_open < 2.0, f"first request took {answered - first_open:.2f}s"


# --------------------------------------------------------------------------------------
# Graceful shutdown
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM], ids=["SIGTERM"])
def test_signal_drains_in_flight_request(serve, tmp_path, sig):
    server = serve(APP, "--threads", "2", "--graceful-timeout", "6",
                   env={"HTTP_APPS_STATE_DIR": str(tmp_path)})
    flight = InFlight(server, "/sleep?s=1.5&tag=slow")
    flight.start()
    wait_for_file(tmp_path / "slow.started", server.proc)

    signalled = time.monotonic()
    server.proc.send_signal(sig)

    # New connections are refused while the in-flight request is still being served.
    outcome = None
    while time.monotonic() - signalled < 1.0:
        outcome = try_connect(server.port)
        if outcome == "refused":
            break
        time.sleep(0.02)
    still_running = server.proc.poll() is None
    assert outcome == "refused", "new connections still accepted 1s after the signal"
    assert still_running, "process exited before the in-flight request finished"
    assert flight.is_alive(), "in-flight request finished before the listener closed (test timing broken)"

    elapsed = wait_exit(server.proc, 10.0)
    assert elapsed is not None, "process did not exit"
    flight.join(5)
    code = server.stop()
    assert flight.error is None, f"in-flight request failed: {flight.error!r}\n{server.stderr}"
    assert flight.response.status == 200
    assert flight.response.body == b"slept"
    assert code == 0, server.stderr
    assert time.monotonic() - signalled < 6.0, "exit took longer than the graceful timeout"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["SIGINT", "SIGQUIT"])
def test_fast_stop_does_not_wait_for_in_flight_requests(serve, tmp_path, sig):
    server = serve(APP, "--threads", "2", "--graceful-timeout", "8",
                   env={"HTTP_APPS_STATE_DIR": str(tmp_path)})
    flight = InFlight(server, "/sleep?s=5&tag=slow", timeout=20)
    flight.start()
    wait_for_file(tmp_path / "slow.started", server.proc)

    server.proc.send_signal(sig)
    elapsed = wait_exit(server.proc, 10.0)
    flight.join(5)
    code = server.stop(sig=signal.SIGKILL)
    assert elapsed is not None, "process did not exit"
    assert elapsed < 4.0, f"a fast stop took {elapsed:.1f}s with a 5 s request in flight"
    assert code == 0, server.stderr
    assert flight.response is None, "the in-flight request was answered, so the stop was not fast"
    assert f"{sig.name} received: stopping now" in server.stderr


def test_graceful_timeout_bounds_shutdown(serve, tmp_path):
    server = serve(APP, "--threads", "2", "--graceful-timeout", "1",
                   env={"HTTP_APPS_STATE_DIR": str(tmp_path)})
    flight = InFlight(server, "/sleep?s=30&tag=stuck", timeout=40)
    flight.start()
    wait_for_file(tmp_path / "stuck.started", server.proc)

    server.proc.send_signal(signal.SIGTERM)
    elapsed = wait_exit(server.proc, 10.0)
    server.stop(sig=signal.SIGKILL)
    assert elapsed is not None, "process still running 10s after SIGTERM with --graceful-timeout 1"
    assert elapsed < 5.0, f"exit took {elapsed:.1f}s with --graceful-timeout 1"
    flight.join(5)
    # The stuck request cannot have been answered with the app's response.
    assert flight.response is None or flight.response.body != b"slept"


def test_idle_keep_alive_connection_does_not_delay_shutdown(serve):
    server = serve(APP, "--threads", "2", "--graceful-timeout", "8")
    with RawConn.open(server) as conn:
        conn.send(get("/idle"))
        assert conn.read_response().status == 200
        # The connection is now idle but open.
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert conn.closed_by_peer(timeout=5.0), "idle keep-alive connection was not closed"
        elapsed = wait_exit(server.proc, 10.0)
    assert elapsed is not None, "process did not exit"
    total = time.monotonic() - signalled
    assert total < 3.0, f"shutdown took {total:.1f}s with one idle keep-alive connection (graceful timeout 8s)"
    assert server.stop() == 0, server.stderr


def test_idle_connection_without_request_does_not_delay_shutdown(serve):
    server = serve(APP, "--threads", "2", "--graceful-timeout", "8")
    with server.connect() as sock:
        time.sleep(0.1)  # accepted, no bytes sent yet
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        elapsed = wait_exit(server.proc, 10.0)
    assert elapsed is not None, "process did not exit"
    total = time.monotonic() - signalled
    assert total < 3.0, f"shutdown took {total:.1f}s with one silent open connection (graceful timeout 8s)"
    assert server.stop() == 0, server.stderr


# --------------------------------------------------------------------------------------
# App errors
# --------------------------------------------------------------------------------------


def test_exception_before_start_response_gives_500(serve):
    server = serve(APP, "--threads", "2")
    with RawConn.open(server) as conn:
        conn.send(get("/raise"))
        resp = conn.read_response()
    assert resp.status == 500
    assert resp.body.strip() == b"Internal Server Error"
    assert (resp.header("content-type") or "").startswith("text/plain")
    assert b"Traceback" not in resp.body and b"marker-7f3a" not in resp.body

    with RawConn.open(server) as conn:
        conn.send(get("/after-error"))
        resp = conn.read_response()
    assert resp.status == 200 and resp.body == b"GET /after-error"

    assert server.stop() == 0
    assert "Traceback" in server.stderr, server.stderr
    assert "marker-7f3a" in server.stderr, server.stderr


def test_sigterm_the_moment_the_port_opens_is_a_clean_stop():
    # The stop handlers are in place before the port opens: a platform may stop an instance as
    # soon as its probe succeeds.
    from conftest import Server

    for _ in range(5):
        server = Server(APP, "--threads", "1")
        while True:
            assert server.proc.poll() is None, server.stop()
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.001)
        server.proc.send_signal(signal.SIGTERM)
        assert server.stop() == 0, server.stderr
