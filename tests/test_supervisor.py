"""Several worker processes under coldbrew's supervisor: real processes, sockets and signals."""

import http.client
import os
import signal
import socket
import threading
import time

import pytest

from conftest import Server, free_port
from conftest import children as all_children

APP = "supervisor_apps:app"


def children(pid):
    """Pids of the live (not zombie) children of ``pid``."""
    return all_children(pid, zombies=False)


def wait_until(predicate, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout}s")


def get(port, path="/", timeout=10.0):
    """One request on a new connection: (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def pids_serving(port, count=40):
    return {get(port)[1].split()[0] for _ in range(count)}


class Load:
    """Client threads sending GET requests until stopped, each on its own keep-alive connection
    (reopened when the server closes it), recording every outcome with the time its
    connection was opened."""

    def __init__(self, port, threads=6, path="/"):
        self.port = port
        self.path = path
        self.results = []  # (connected_at, status or None, body or error)
        self.lock = threading.Lock()
        self.running = True
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join(30)

    def run(self):
        conn = None
        connected_at = None
        while self.running:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
                try:
                    conn.connect()
                except OSError as err:
                    # Refused: the port is closed. Not a failed request, never sent.
                    conn = None
                    time.sleep(0.01)
                    continue
                connected_at = time.monotonic()
            try:
                conn.request("GET", self.path)
                response = conn.getresponse()
                body = response.read().decode()
                outcome = (connected_at, response.status, body)
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as err:
                outcome = (connected_at, None, repr(err))
                conn.close()
                conn = None
            with self.lock:
                self.results.append(outcome)
        if conn is not None:
            conn.close()

    def count(self):
        with self.lock:
            return len(self.results)

    def failures(self, connected_before=None):
        with self.lock:
            return [
                r for r in self.results
                if r[1] != 200 and (connected_before is None or r[0] < connected_before)
            ]

    def pids(self):
        with self.lock:
            return {r[2].split()[0] for r in self.results if r[1] == 200}


@pytest.fixture
def state(tmp_path):
    return tmp_path


def supervised(serve, state, *args, env=None, **kwargs):
    full_env = {"SUPERVISOR_STATE_DIR": str(state)}
    full_env.update(env or {})
    return serve(APP, *args, env=full_env, **kwargs)


def imported(state):
    return sorted(int(p.name.split(".")[1]) for p in state.glob("imported.*"))


# --------------------------------------------------------------------------------------
# Startup
# --------------------------------------------------------------------------------------


def test_workers_serve_from_one_port(serve, state):
    server = supervised(serve, state, "--workers", "3")
    workers = wait_until(lambda: len(children(server.proc.pid)) == 3 and children(server.proc.pid), what="3 workers")
    assert sorted(imported(state)) == workers, "each worker imports the app itself (no --preload)"
    seen = {int(pid) for pid in pids_serving(server.port, 60)}
    assert seen <= set(workers)
    assert len(seen) >= 2, f"60 connections all went to one worker: {seen}"
    assert server.stop() == 0, server.stderr
    assert "with 3 worker(s) x 8 thread(s) if WSGI, one event loop if ASGI (set by --workers)" in server.stderr
    assert children(server.proc.pid) == []


def test_port_opens_only_once_every_worker_has_imported(state):
    server = Server(APP, "--workers", "3", env={
        "SUPERVISOR_STATE_DIR": str(state), "SUPERVISOR_IMPORT_DELAY": "1.5",
    })
    try:
        spawned = time.monotonic()
        while True:
            assert server.proc.poll() is None, server.proc.communicate()
            try:
                socket.create_connection(("127.0.0.1", server.port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.01)
            assert time.monotonic() - spawned < 30, "port never opened"
        markers_when_open = len(imported(state))
        assert markers_when_open == 3, f"port open with {markers_when_open} of 3 workers imported"
        assert get(server.port)[0] == 200
    finally:
        assert server.stop() == 0, server.stderr


def test_worker_failing_to_import_stops_the_server(state):
    port = free_port()
    server = Server(APP, "--workers", "2", port=port, env={
        "SUPERVISOR_STATE_DIR": str(state), "SUPERVISOR_FAIL_IMPORT": "1",
    })
    connected = False
    while server.proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            connected = True
        except OSError:
            time.sleep(0.01)
    code = server.stop()
    assert code == 3, server.stderr
    assert not connected, "the port opened although no worker could import the app"
    assert "RuntimeError: this app refuses to load" in server.stderr
    last = server.stderr.strip().splitlines()[-1]
    assert last.startswith("coldbrew: error: worker "), last
    assert "could not start: cannot import module 'supervisor_apps': RuntimeError: this app refuses to load" in last


def test_workers_default_from_web_concurrency(serve, state):
    server = supervised(serve, state, env={"WEB_CONCURRENCY": "3"})
    wait_until(lambda: len(children(server.proc.pid)) == 3, what="3 workers")
    assert server.stop() == 0
    assert "with 3 worker(s) x 8 thread(s) if WSGI, one event loop if ASGI (WEB_CONCURRENCY=3)" in server.stderr


def test_bad_web_concurrency_is_a_config_error(state):
    server = Server(APP, env={"WEB_CONCURRENCY": "lots"})
    server.proc.wait(30)
    code = server.stop()
    assert code == 2, server.stderr
    assert server.stderr.strip().splitlines()[-1] == (
        "coldbrew: error: WEB_CONCURRENCY: expected a positive integer, got 'lots'"
    )


# --------------------------------------------------------------------------------------
# Supervision
# --------------------------------------------------------------------------------------


def test_killed_worker_is_replaced_while_the_others_serve(serve, state):
    server = supervised(serve, state, "--workers", "2", "--metrics-bind", f"127.0.0.1:{free_port()}")
    before = wait_until(lambda: len(children(server.proc.pid)) == 2 and children(server.proc.pid))
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    # The other worker serves throughout.
    for _ in range(20):
        status, body = get(server.port)
        assert status == 200
    after = wait_until(
        lambda: len(children(server.proc.pid)) == 2 and victim not in children(server.proc.pid)
        and children(server.proc.pid),
        what="a replacement worker",
    )
    new = set(after) - set(before)
    assert len(new) == 1
    wait_until(lambda: str(new.pop()) in pids_serving(server.port, 60) or True)
    assert server.stop() == 0, server.stderr
    assert f"(pid {victim}) was killed by signal 9 (SIGKILL); starting another" in server.stderr


def test_ttin_and_ttou_add_and_remove_a_worker(serve, state):
    server = supervised(serve, state, "--workers", "2")
    wait_until(lambda: len(children(server.proc.pid)) == 2)
    server.proc.send_signal(signal.SIGTTIN)
    wait_until(lambda: len(children(server.proc.pid)) == 3, what="a third worker")
    # One at a time: a signal sent again before the first is handled counts once.
    server.proc.send_signal(signal.SIGTTOU)
    wait_until(lambda: len(children(server.proc.pid)) == 2, what="back to two workers")
    server.proc.send_signal(signal.SIGTTOU)
    wait_until(lambda: len(children(server.proc.pid)) == 1, what="one worker left")
    # Never fewer than one.
    server.proc.send_signal(signal.SIGTTOU)
    time.sleep(0.5)
    assert len(children(server.proc.pid)) == 1
    assert get(server.port)[0] == 200
    assert server.stop() == 0, server.stderr


def test_crash_loop_stops_the_server(state):
    # Every worker dies 0.3 s after its import, again and again.
    server = Server(APP, "--workers", "2", env={
        "SUPERVISOR_STATE_DIR": str(state), "SUPERVISOR_CRASH_AFTER": "0.3",
    })
    try:
        code = server.proc.wait(60)
    finally:
        server.stop(sig=signal.SIGKILL)
    assert code == 1, server.stderr
    last = server.stderr.strip().splitlines()[-1]
    assert last.startswith("coldbrew: error: ") and "workers in a row died within 2 s of starting" in last, last
    assert "exited with status 17; starting another" in server.stderr


# --------------------------------------------------------------------------------------
# Stopping, reloading and recycling under load
# --------------------------------------------------------------------------------------


def test_sigterm_under_load_fails_no_accepted_request(serve, state):
    server = supervised(serve, state, "--workers", "2", "--graceful-timeout", "5")
    with Load(server.port, threads=8, path="/sleep?0.05") as load:
        wait_until(lambda: load.count() > 50, what="load running")
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        exited = server.proc.wait(15)
        elapsed = time.monotonic() - signalled
        load.stop()
    assert exited == 0, server.stop()
    assert elapsed < 5.0, f"exit took {elapsed:.1f}s with --graceful-timeout 5"
    failed = load.failures(connected_before=signalled)
    assert failed == [], f"{len(failed)} requests on connections opened before SIGTERM failed: {failed[:5]}"
    server.stop()


def test_max_requests_recycles_workers_under_load_without_errors(serve, state):
    server = supervised(serve, state, "--workers", "2", "--max-requests", "100", "--max-requests-jitter", "20")
    first = set(wait_until(lambda: len(children(server.proc.pid)) == 2 and children(server.proc.pid)))
    with Load(server.port, threads=6) as load:
        # Until replacements have served too, not a fixed count: on an idle machine 700 requests
        # take less time than a replacement needs to import the app.
        wait_until(lambda: load.count() > 700 and len({int(p) for p in load.pids()} - first) >= 2,
                   timeout=60, what="700 requests, some served by replacement workers")
    assert load.failures() == [], load.failures()[:5]
    served_by = {int(pid) for pid in load.pids()}
    assert len(served_by - first) >= 2, f"no recycling seen: {served_by} from {first}"
    assert server.stop() == 0, server.stderr
    assert "served its --max-requests; replacing it" in server.stderr


def test_hup_replaces_every_worker_under_load_without_errors(serve, state):
    (state / "version").write_text("v1")
    server = supervised(serve, state, "--workers", "2")
    first = set(wait_until(lambda: len(children(server.proc.pid)) == 2 and children(server.proc.pid)))
    with Load(server.port, threads=6) as load:
        wait_until(lambda: load.count() > 100, what="load running")
        (state / "version").write_text("v2")
        server.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: len(children(server.proc.pid)) == 2 and not (set(children(server.proc.pid)) & first),
            what="two new workers",
        )
        seen = load.count()
        wait_until(lambda: load.count() > seen + 100, what="load after the reload")
    assert load.failures() == [], load.failures()[:5]
    assert {get(server.port)[1].split()[1] for _ in range(20)} == {"v2"}, "new workers re-import the app"
    assert server.stop() == 0, server.stderr
    assert "SIGHUP received: replacing 2 worker(s) one by one" in server.stderr


def test_failed_reload_keeps_the_current_workers(serve, state):
    server = supervised(serve, state, "--workers", "2")
    first = wait_until(lambda: len(children(server.proc.pid)) == 2 and children(server.proc.pid))
    (state / "broken").write_text("")
    server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "keeping the current workers" in _stderr_so_far(server), what="the failed reload")
    assert children(server.proc.pid) == first
    assert {int(pid) for pid in pids_serving(server.port)} <= set(first)
    # Once the app can load again, the held-back reload goes through by itself.
    (state / "broken").unlink()
    wait_until(
        lambda: len(children(server.proc.pid)) == 2 and not (set(children(server.proc.pid)) & set(first)),
        timeout=30, what="the retried reload",
    )
    assert server.stop() == 0, server.stderr
    assert "RuntimeError: this version of the app is broken" in server.stderr
    # The new worker's failure is the supervisor's ERROR line, with the traceback under it; the
    # worker prints nothing of its own, and nothing ends the server's output as a failure.
    lines = server.stderr.splitlines()
    failed = [i for i, line in enumerate(lines) if "keeping the current workers" in line]
    assert failed, server.stderr
    assert lines.count("Traceback (most recent call last):") == len(failed), server.stderr
    for i in failed:
        assert lines[i].endswith("trying again in 10 s:"), lines[i]
        assert lines[i + 1] == "Traceback (most recent call last):", server.stderr
    assert "coldbrew: error:" not in server.stderr


def _stderr_so_far(server):
    """What the server wrote to stderr until now, without waiting for it to exit."""
    import fcntl

    fd = server.proc.stderr.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        chunk = server.proc.stderr.read()
    except (BlockingIOError, TypeError):
        chunk = None
    if chunk:
        server.stderr += chunk
    return server.stderr


# --------------------------------------------------------------------------------------
# Metrics across workers
# --------------------------------------------------------------------------------------


def scrape(port):
    status, body = get(port, "/metrics")
    assert status == 200
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_add_up_across_workers_and_survive_a_dead_worker(serve, state):
    metrics_port = free_port()
    server = supervised(serve, state, "--workers", "2", "--metrics-bind", f"127.0.0.1:{metrics_port}")
    workers = wait_until(lambda: len(children(server.proc.pid)) == 2 and children(server.proc.pid))
    # Both workers must have served before the sum means anything. Which worker accepts a
    # connection is the kernel's choice among the workers awake at that moment, and a worker
    # still waking from its start signal takes none; so keep connecting (bounded) until both
    # have answered, rather than assuming a fixed number of connections is enough.
    served = []
    deadline = time.monotonic() + 30
    while len(set(served)) < 2 or len(served) < 60:
        assert time.monotonic() < deadline, f"{len(served)} connections all went to one worker: {set(served)}"
        served.append(get(server.port)[1].split()[0])
    assert set(served) <= {str(pid) for pid in workers}
    key = 'coldbrew_requests_total{method="GET",status="2xx"}'
    assert scrape(metrics_port)[key] == len(served)
    os.kill(workers[0], signal.SIGKILL)
    wait_until(lambda: len(children(server.proc.pid)) == 2 and workers[0] not in children(server.proc.pid))
    for _ in range(10):
        get(server.port)
    values = scrape(metrics_port)
    assert values[key] == len(served) + 10, "the dead worker's requests still count"
    assert values["coldbrew_worker_restarts_total"] == 1
    assert values["coldbrew_requests_in_flight"] == 0
    assert server.stop() == 0, server.stderr


# --------------------------------------------------------------------------------------
# Health endpoint
# --------------------------------------------------------------------------------------


def test_health_path_is_answered_without_the_app_and_turns_503_while_draining(serve, state):
    server = supervised(serve, state, "--health-path", "/healthz", "--graceful-timeout", "5")
    # The app would answer any path with its pid: "ok" comes from the server.
    assert get(server.port, "/healthz") == (200, "ok\n")
    # A long request keeps the server draining; a keep-alive connection asks for health.
    slow = threading.Thread(target=get, args=(server.port, "/sleep?2"), daemon=True)
    slow.start()
    time.sleep(0.2)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", "/healthz")
    first = conn.getresponse()
    assert (first.status, first.read()) == (200, b"ok\n")
    server.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: _refused(server.port), what="the listener to close")
    conn.request("GET", "/healthz")
    during = conn.getresponse()
    assert during.status == 503
    assert during.read() == b"draining\n"
    assert during.getheader("connection") == "close"
    conn.close()
    slow.join(10)
    assert server.stop() == 0, server.stderr


def _refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# No heartbeat
# --------------------------------------------------------------------------------------


def test_a_frozen_worker_is_not_killed_for_missing_a_heartbeat(serve, state):
    # SIGSTOP is what CPU throttling looks like from inside: a process that gets no CPU.
    server = supervised(serve, state, "--workers", "2")
    workers = wait_until(lambda: len(children(server.proc.pid)) == 2 and children(server.proc.pid))
    os.kill(workers[0], signal.SIGSTOP)
    try:
        time.sleep(3.0)
        assert children(server.proc.pid) == workers, "a worker was replaced while it was frozen"
    finally:
        os.kill(workers[0], signal.SIGCONT)
    assert {int(pid) for pid in pids_serving(server.port, 60)} == set(workers)
    assert server.stop() == 0, server.stderr
    assert "starting another" not in server.stderr


def test_jitter_alone_recycles_nothing(serve, state):
    server = supervised(serve, state, "--workers", "2", "--max-requests-jitter", "5")
    workers = wait_until(lambda: len(children(server.proc.pid)) == 2 and children(server.proc.pid))
    for _ in range(50):
        assert get(server.port)[0] == 200
    assert children(server.proc.pid) == workers
    assert server.stop() == 0, server.stderr
    assert "--max-requests" not in server.stderr


@pytest.mark.parametrize("workers", ["1", "2"])
def test_stray_signals_end_no_process(serve, state, workers):
    server = supervised(serve, state, "--workers", workers)
    before = children(server.proc.pid)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH) + ((signal.SIGHUP, signal.SIGTTIN) if workers == "1" else ()):
        server.proc.send_signal(sig)
        time.sleep(0.2)
    for pid in before:
        os.kill(pid, signal.SIGUSR1)
        os.kill(pid, signal.SIGHUP)
    time.sleep(0.3)
    assert server.proc.poll() is None, server.stop()
    assert children(server.proc.pid) == before
    assert get(server.port)[0] == 200
    assert server.stop() == 0, server.stderr
    assert "received and ignored" in server.stderr
