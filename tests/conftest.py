"""Shared fixtures: real coldbrew server processes on real sockets."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Servers started by these tests run one process unless a test asks for workers: most tests
# are about one process's behaviour, and the default would follow this machine's core count.
# Tests of the sizing defaults remove it from their children's environment.
os.environ["WEB_CONCURRENCY"] = "1"

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"
EXAMPLES = ROOT / "examples"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_dual_stack_port():
    """A port free on every IPv4 and IPv6 address, for an `[::]` listener (a port free on
    127.0.0.1 may be taken on another address); skips the test without IPv6."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
            return s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 on this machine")


def children(pid, zombies=True):
    """Pids whose parent is ``pid``, from /proc (zombies too, unless ``zombies`` is false)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == pid and (zombies or fields[0] != b"Z"):
            kids.append(int(entry))
    return sorted(kids)


def echo_app_calls(server):
    """How many times tests/apps/conformance_apps.py's app has been called so far."""
    import json

    from test_http1 import RawConn

    with RawConn.open(server) as conn:
        conn.send(b"GET /__calls HTTP/1.0\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200, resp
        return json.loads(resp.body)["calls"]


def wait_for_port(port, proc, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise RuntimeError(f"server exited with {proc.returncode} before listening:\n{err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


class Server:
    """A coldbrew process started with `python -m coldbrew`, stopped with SIGTERM."""

    def __init__(self, app, *args, cwd=APPS, env=None, port=None, prefix=()):
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ)
        full_env.pop("COLDBREW_CMD_ARGS", None)
        full_env["PYTHONUNBUFFERED"] = "1"
        for name, value in (env or {}).items():
            # None removes a variable the test process has (WEB_CONCURRENCY, say).
            if value is None:
                full_env.pop(name, None)
            else:
                full_env[name] = value
        self.cmd = [*prefix, sys.executable, "-m", "coldbrew", "--bind", f"127.0.0.1:{self.port}", *args, app]
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=str(cwd),
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout = ""
        self.stderr = ""

    def wait_ready(self, timeout=30.0):
        wait_for_port(self.port, self.proc, timeout)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        self.stdout += out or ""
        self.stderr += err or ""
        return self.proc.returncode

    def connect(self, timeout=10.0):
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        return sock


@pytest.fixture
def serve():
    """serve(app_spec, *extra_args, cwd=..., env=...) -> a ready Server; stopped at teardown."""
    started = []

    def start(app, *args, cwd=APPS, env=None, ready=True):
        server = Server(app, *args, cwd=cwd, env=env)
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


# Lines a test module wants shown at the end of the run (test_conformance.py's counts).
TERMINAL_SUMMARY = []


def pytest_terminal_summary(terminalreporter):
    for line in TERMINAL_SUMMARY:
        terminalreporter.write_line(line)


def recv_until_closed(sock, timeout=10.0):
    """Read everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)
