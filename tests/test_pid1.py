"""coldbrew as PID 1 of a new PID namespace, as in a container without an init.

Each test starts `unshare --pid --fork --mount-proc python -m coldbrew ... pid1_apps:app`; the
network namespace stays shared, so the server is reached on 127.0.0.1. `unshare` forks the
namespace's PID 1 (coldbrew) and waits for it; everything is checked from outside, through
this process's /proc, where the namespace's processes have their host pids.

Being PID 1, coldbrew runs a supervisor even with one worker: the supervisor reaps the orphans
the kernel reparents to it, and the worker, a separate process, keeps its own children's exit
statuses.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import APPS, children, free_port, wait_for_port
from test_http1 import RawConn, get
from test_lifecycle import InFlight, try_connect, wait_exit, wait_for_file

APP = "pid1_apps:app"
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


def _unshare_problem():
    """Why this machine cannot run a PID namespace here, or None."""
    try:
        done = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "unshare (util-linux) is not installed"
    except subprocess.TimeoutExpired:
        return "unshare --pid --fork --mount-proc true did not finish"
    if done.returncode != 0:
        return f"unshare --pid --fork --mount-proc fails here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}"
    return None


@pytest.fixture(scope="module", autouse=True)
def needs_unshare():
    problem = _unshare_problem()
    if problem:
        pytest.skip(problem)


# --------------------------------------------------------------------------------------
# /proc, from outside the namespace
# --------------------------------------------------------------------------------------


def status(pid):
    """/proc/PID/status as {field: value}, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return None


def ns_pid(host_pid):
    """The pid of a process inside its own (innermost) PID namespace, or None once it is gone."""
    fields = status(host_pid)
    return int(fields["NSpid"].split()[-1]) if fields else None


def zombies(pid):
    """The children of `pid` that are zombies: exited, but not reaped."""
    return [kid for kid in children(pid) if (status(kid) or {}).get("State", "").startswith("Z")]


def poll(condition, timeout=10.0):
    """Call `condition` until it is true or `timeout` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class Pid1Server:
    """`unshare ... python -m coldbrew`; `init` is the host pid of coldbrew, the namespace's PID 1."""

    def __init__(self, state_dir, *args, app=APP):
        self.port = free_port()
        self.host = "127.0.0.1"
        env = dict(os.environ)
        env.pop("COLDBREW_CMD_ARGS", None)
        env["PYTHONUNBUFFERED"] = "1"
        env["PID1_APPS_STATE_DIR"] = str(state_dir)
        self.cmd = [*UNSHARE, sys.executable, "-m", "coldbrew", "--bind", f"127.0.0.1:{self.port}",
                    "--log-level", "debug", *args, app]
        self.proc = subprocess.Popen(self.cmd, cwd=str(APPS), env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.init = None
        self.stdout = self.stderr = ""

    def wait_ready(self):
        wait_for_port(self.port, self.proc)
        self.find_init()
        assert ns_pid(self.init) == 1, status(self.init)
        return self

    def connect(self, timeout=10.0):
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def request(self, path):
        with RawConn.open(self) as conn:
            conn.send(get(path, headers=["Connection: close"]))
            resp = conn.read_response()
        assert resp.status == 200, (path, resp.status, resp.body)
        return resp.body.decode()

    def signal(self, sig):
        # To coldbrew itself: unshare blocks TERM and INT while it waits for its child.
        os.kill(self.init, sig)

    def finish(self, timeout=20.0):
        """Waits for unshare to exit (it exits with coldbrew's status); returns that status."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # KILL to a namespace's PID 1 kills every process in the namespace.
            if self.init is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.init, signal.SIGKILL)
            self.proc.kill()
            out, err = self.proc.communicate()
        self.stdout += out or ""
        self.stderr += err or ""
        return self.proc.returncode

    def find_init(self, timeout=10.0):
        """The host pid of unshare's child, once it has forked it."""
        kids = poll(lambda: children(self.proc.pid), timeout)
        assert len(kids) == 1, f"unshare (pid {self.proc.pid}) has children {kids}"
        self.init = kids[0]
        return self.init

    def stop(self):
        if self.proc.poll() is None:
            if self.init is None:
                self.find_init()
            with contextlib.suppress(ProcessLookupError):
                self.signal(signal.SIGTERM)
        return self.finish()


@pytest.fixture
def pid1(tmp_path):
    started = []

    def start(*args, app=APP, ready=True):
        server = Pid1Server(tmp_path, *args, app=app)
        started.append(server)
        return server.wait_ready() if ready else server

    yield start
    for server in started:
        server.stop()


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_pid1_serves_through_a_supervisor_with_one_worker(pid1):
    server = pid1()
    worker, parent = map(int, server.request("/pid").split())
    assert parent == 1, "the request was not served by a child of PID 1"
    assert worker != 1, "PID 1 serves requests itself instead of supervising a worker"
    # From outside: coldbrew is PID 1, with exactly one child, the worker that answered.
    kids = children(server.init)
    assert [ns_pid(kid) for kid in kids] == [worker], kids
    for pid in (server.init, kids[0]):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert b"\0-m\0coldbrew\0" in f.read()
    assert server.stop() == 0, server.stderr
    assert "with 1 worker(s)" in server.stderr, server.stderr


def test_pid1_reaps_orphans(pid1, tmp_path):
    server = pid1()
    orphans = [int(server.request("/orphan?tag=first")) for _ in range(3)]
    assert len(set(orphans)) == 3, orphans
    # The kernel gave each orphan to the namespace's PID 1, coldbrew's supervisor.
    adopted = {ns_pid(kid): kid for kid in children(server.init)}
    assert set(orphans) <= set(adopted), f"orphans {orphans}, children of PID 1 {adopted}"
    orphan_hosts = [adopted[pid] for pid in orphans]
    assert not zombies(server.init)

    def left():
        return [(pid, (status(pid) or {}).get("State")) for pid in orphan_hosts if pid in children(server.init)]

    (tmp_path / "first.release").touch()
    # Each orphan exits, and PID 1 reaps it: it leaves /proc instead of staying a zombie.
    assert poll(lambda: not left()), f"orphans still children of PID 1: {left()}"
    assert poll(lambda: not zombies(server.init), timeout=5.0), f"zombies: {zombies(server.init)}"
    # The worker was not mistaken for one of them.
    assert len(children(server.init)) == 1
    assert server.request("/pid").split()[1] == "1"
    assert server.stop() == 0, server.stderr
    for pid in orphans:
        assert f"reaped process {pid}, not a worker" in server.stderr, server.stderr


def test_app_keeps_its_subprocess_exit_status(pid1, tmp_path):
    server = pid1()
    # Orphans exit and are reaped by PID 1 while the app waits for its own subprocesses.
    for _ in range(3):
        server.request("/orphan?tag=churn")
    (tmp_path / "churn.release").touch()
    statuses = [server.request("/exit7") for _ in range(20)]
    assert statuses == ["7"] * 20
    assert poll(lambda: len(children(server.init)) == 1), children(server.init)
    assert not zombies(server.init)
    assert server.stop() == 0, server.stderr


def test_sigterm_to_pid1_drains_and_exits_0(pid1, tmp_path):
    server = pid1("--threads", "2", "--graceful-timeout", "10")
    flight = InFlight(server, "/sleep?s=1.5&tag=slow")
    flight.start()
    wait_for_file(tmp_path / "slow.started", server.proc)

    server.signal(signal.SIGTERM)
    # New connections are refused while the in-flight request is being finished.
    outcome = poll(lambda: try_connect(server.port) == "refused", timeout=10.0)
    assert outcome, "new connections still accepted after SIGTERM"
    flight.join(20)
    code = server.finish()
    assert flight.error is None, f"in-flight request failed: {flight.error!r}\n{server.stderr}"
    assert flight.response.status == 200 and flight.response.body == b"slept"
    assert code == 0, server.stderr
    assert "SIGTERM received: no new connections" in server.stderr


def test_sigint_to_pid1_stops_fast(pid1, tmp_path):
    server = pid1("--threads", "2", "--graceful-timeout", "60")
    flight = InFlight(server, "/sleep?s=60&tag=stuck", timeout=90)
    flight.start()
    wait_for_file(tmp_path / "stuck.started", server.proc)

    server.signal(signal.SIGINT)
    # Well before the 60 s request or graceful timeout could end.
    elapsed = wait_exit(server.proc, 20.0)
    flight.join(10)
    code = server.finish()
    assert elapsed is not None, "coldbrew did not stop on SIGINT"
    assert code == 0, server.stderr
    assert flight.response is None, "the in-flight request was answered, so the stop was not fast"
    assert "SIGINT received: stopping now" in server.stderr


def test_sigterm_during_preload_import_stops_pid1(pid1, tmp_path):
    server = pid1("--preload", app="pid1_slow_import:app", ready=False)
    wait_for_file(tmp_path / "import.started", server.proc)
    server.find_init()
    server.signal(signal.SIGTERM)
    # The import takes 3 s; a server that heeded the signal is gone well before this.
    elapsed = wait_exit(server.proc, 10.0)
    server.stop()
    assert elapsed is not None, "still running 10 s after SIGTERM"
    assert "serving WSGI app" not in server.stderr, server.stderr
