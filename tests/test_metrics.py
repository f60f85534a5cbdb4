"""Prometheus metrics on a separate listener (--metrics-bind HOST:PORT).

The app is tests/apps/metrics_apps.py. Scrapes go to the metrics port, which is served by
the I/O thread alone: they are not counted as requests and never wait for Python.
"""

import http.client
import os
import re
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import free_port, wait_for_port
from test_http1 import RawConn, get
from test_lifecycle import wait_for_file

APP = "metrics_apps:app"

FAMILIES = {
    "coldbrew_requests_total": "counter",
    "coldbrew_request_duration_seconds": "histogram",
    "coldbrew_requests_in_flight": "gauge",
    "coldbrew_requests_waiting": "gauge",
    "coldbrew_python_threads_busy": "gauge",
    "coldbrew_request_body_bytes_total": "counter",
    "coldbrew_response_body_bytes_total": "counter",
    "coldbrew_worker_restarts_total": "counter",
    "coldbrew_websockets_total": "counter",
    "coldbrew_websockets_open": "gauge",
    "coldbrew_websocket_messages_total": "counter",
    "coldbrew_startup_duration_seconds": "gauge",
}
BUCKETS = ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
           "1", "2.5", "5", "10", "30", "60", "+Inf"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other"]
CLASSES = ["1xx", "2xx", "3xx", "4xx", "5xx"]


# --------------------------------------------------------------------------------------
# Scraping and parsing
# --------------------------------------------------------------------------------------

SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"(,|$)')


class Metrics:
    """One parsed scrape: HELP/TYPE per family and every sample by (name, labels)."""

    def __init__(self, text):
        self.text = text
        self.helps = {}
        self.types = {}
        self.samples = {}
        for line in text.splitlines():
            assert line, f"empty line in exposition:\n{text}"
            if line.startswith("# HELP "):
                name, _, help_text = line[7:].partition(" ")
                assert help_text, line
                self.helps[name] = help_text
            elif line.startswith("# TYPE "):
                name, _, kind = line[7:].partition(" ")
                assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert name not in self.types, f"second TYPE line: {line}"
                self.types[name] = kind
            else:
                assert not line.startswith("#"), line
                m = SAMPLE_RE.match(line)
                assert m, f"malformed sample line {line!r}"
                name, raw_labels, value = m.groups()
                labels = {}
                if raw_labels:
                    pos = 0
                    while pos < len(raw_labels):
                        lm = LABEL_RE.match(raw_labels, pos)
                        assert lm, f"malformed labels in {line!r}"
                        labels[lm.group(1)] = lm.group(2)
                        pos = lm.end()
                family = self._family(name)
                assert family in self.types, f"sample before/without its TYPE line: {line}"
                key = (name, frozenset(labels.items()))
                assert key not in self.samples, f"duplicate sample {line}"
                self.samples[key] = float(value)

    def _family(self, name):
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.types.get(base) == "histogram":
                return base
        return name

    def value(self, name, **labels):
        key = (name, frozenset(labels.items()))
        assert key in self.samples, f"no sample {name}{labels} in:\n{self.text}"
        return self.samples[key]

    def requests(self, method, status):
        return self.value("coldbrew_requests_total", method=method, status=status)

    def requests_total(self):
        return sum(v for (name, _), v in self.samples.items() if name == "coldbrew_requests_total")

    def buckets(self):
        return [self.value("coldbrew_request_duration_seconds_bucket", le=le) for le in BUCKETS]

    @property
    def count(self):
        return self.value("coldbrew_request_duration_seconds_count")

    @property
    def in_flight(self):
        return self.value("coldbrew_requests_in_flight")

    @property
    def waiting(self):
        return self.value("coldbrew_requests_waiting")

    @property
    def busy(self):
        return self.value("coldbrew_python_threads_busy")


def http_get(port, path, timeout=10.0):
    """(status, content type, body) of GET path on 127.0.0.1:port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def scrape(port, timeout=10.0):
    status, ctype, body = http_get(port, "/metrics", timeout=timeout)
    assert status == 200, (status, body)
    return Metrics(body.decode("utf-8"))


def scrape_until(port, predicate, timeout=10.0):
    """Scrape until predicate(metrics) holds; return that scrape (fail with the last one).

    The counters for a response are updated when the server is done with it, which may be
    a moment after the client has read the last byte."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(port)
        if predicate(metrics):
            return metrics
        if time.monotonic() >= deadline:
            pytest.fail(f"metrics never reached the expected state within {timeout}s:\n{metrics.text}")
        time.sleep(0.02)


def start(serve, *args, env=None):
    """A server with metrics on a free port; returns (server, metrics port)."""
    metrics_port = free_port()
    server = serve(APP, "--metrics-bind", f"127.0.0.1:{metrics_port}", *args, env=env)
    wait_for_port(metrics_port, server.proc)
    return server, metrics_port


def request(server, method, path, body=None, timeout=20.0):
    """One request on its own connection; returns the framed Response."""
    headers = [] if body is None else [f"Content-Length: {len(body)}"]
    with RawConn.open(server, timeout=timeout) as conn:
        conn.send(get(path, method=method, headers=headers) + (body or b""))
        return conn.read_response(method=method)


def method_label(method):
    return method if method in METHODS else "other"


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


def test_scrape_is_prometheus_text_with_every_family(serve):
    server, mport = start(serve)
    status, ctype, body = http_get(mport, "/metrics")
    assert status == 200
    assert ctype is not None and ctype.split(";")[0].strip() == "text/plain", ctype
    assert "version=0.0.4" in ctype.replace(" ", ""), ctype
    text = body.decode("utf-8")
    assert text.endswith("\n")
    metrics = Metrics(text)
    for name, kind in FAMILIES.items():
        assert metrics.types.get(name) == kind, f"{name}: {metrics.types.get(name)}"
        assert name in metrics.helps, f"no HELP for {name}"
    assert all(name.startswith("coldbrew_") for name in metrics.types)
    # Fresh server: nothing counted yet, every method/status series present at 0.
    for method in METHODS:
        for cls in CLASSES:
            assert metrics.requests(method, cls) == 0
    assert metrics.buckets() == [0] * len(BUCKETS)
    assert metrics.count == 0
    assert metrics.value("coldbrew_request_duration_seconds_sum") == 0
    assert metrics.in_flight == 0
    assert metrics.waiting == 0
    assert metrics.busy == 0
    assert metrics.value("coldbrew_request_body_bytes_total") == 0
    assert metrics.value("coldbrew_response_body_bytes_total") == 0
    assert metrics.value("coldbrew_worker_restarts_total") == 0
    assert metrics.value("coldbrew_startup_duration_seconds") > 0


TRAFFIC = [
    ("GET", "/ok", None, 200),
    ("GET", "/ok", None, 200),
    ("GET", "/ok", None, 200),
    ("GET", "/missing", None, 404),
    ("GET", "/missing", None, 404),
    ("GET", "/boom", None, 500),
    ("GET", "/redirect", None, 302),
    ("POST", "/echo", b"a" * 1000, 200),
    ("POST", "/echo", b"b" * 12345, 200),
    ("POST", "/echo", b"", 200),
    ("PUT", "/ok", None, 200),
    ("DELETE", "/missing", None, 404),
    ("PATCH", "/ok", None, 200),
    ("HEAD", "/ok", None, 200),
    ("OPTIONS", "/ok", None, 200),
    ("BREW", "/ok", None, 200),
]


def test_counts_match_the_traffic_sent(serve):
    server, mport = start(serve, "--threads", "2")
    received = 0
    sent = 0
    expected = Counter()
    for method, path, body, status in TRAFFIC:
        resp = request(server, method, path, body)
        assert resp.status == status, (method, path, resp)
        if path == "/echo":
            assert resp.body == body
        received += len(resp.body)
        sent += len(body or b"")
        expected[(method_label(method), f"{status // 100}xx")] += 1
    assert received > 0 and sent == 1000 + 12345

    n = len(TRAFFIC)
    metrics = scrape_until(mport, lambda m: m.count >= n and m.in_flight == 0 and m.busy == 0)
    # Scrapes are on the metrics port: they are not requests. Scrape a few more times and
    # check that nothing moved.
    for _ in range(3):
        scrape(mport)
    again = scrape(mport)
    assert again.samples == metrics.samples, "scrapes changed the counters"

    for method in METHODS:
        for cls in CLASSES:
            assert metrics.requests(method, cls) == expected[(method, cls)], (method, cls, metrics.text)
    assert metrics.requests_total() == n

    buckets = metrics.buckets()
    assert buckets == sorted(buckets), f"buckets are not cumulative: {buckets}"
    assert buckets[-1] == metrics.count == n
    assert metrics.value("coldbrew_request_duration_seconds_sum") > 0

    assert metrics.value("coldbrew_request_body_bytes_total") == sent
    assert metrics.value("coldbrew_response_body_bytes_total") == received
    assert metrics.in_flight == 0
    assert metrics.waiting == 0
    assert metrics.busy == 0


def test_in_flight_and_busy_threads_during_a_slow_request(serve, tmp_path):
    server, mport = start(serve, "--threads", "2", env={"METRICS_APPS_STATE_DIR": str(tmp_path)})
    idle = scrape(mport)
    assert idle.in_flight == 0
    assert idle.busy == 0

    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(request, server, "GET", "/sleep?s=2&tag=slow")
        wait_for_file(str(tmp_path / "slow.started"), server.proc)
        during = scrape(mport)
        assert not slow.done(), "the slow request ended before the scrape: the test proves nothing"
        assert during.in_flight >= 1, during.text
        assert during.busy >= 1, during.text
        assert during.busy <= 2, during.text
        assert during.count == 0, "a request still running was already counted"
        assert slow.result(timeout=20).status == 200

    after = scrape_until(mport, lambda m: m.count >= 1 and m.in_flight == 0 and m.busy == 0)
    assert after.requests("GET", "2xx") == 1
    # It slept for 2 s: the histogram saw a request between 1 and 2.5 s.
    assert after.value("coldbrew_request_duration_seconds_bucket", le="1") == 0
    assert after.value("coldbrew_request_duration_seconds_bucket", le="2.5") == 1
    assert after.value("coldbrew_request_duration_seconds_sum") >= 2.0


def test_in_flight_returns_to_zero_when_the_client_goes_away(serve, tmp_path):
    """A client that hangs up before its response exists must not leave in-flight at 1."""
    server, mport = start(serve, "--threads", "1", env={"METRICS_APPS_STATE_DIR": str(tmp_path)})
    sock = server.connect()
    sock.sendall(get("/sleep?s=0.5&tag=gone"))
    wait_for_file(str(tmp_path / "gone.started"), server.proc)
    sock.close()
    # The app finishes; its response has nobody to go to.
    time.sleep(0.6)
    scrape_until(mport, lambda m: m.in_flight == 0 and m.busy == 0, timeout=5.0)
    # The server still counts correctly afterwards.
    assert request(server, "GET", "/ok").status == 200
    scrape_until(mport, lambda m: m.requests("GET", "2xx") >= 1 and m.in_flight == 0)


def test_requests_waiting_for_a_python_thread_are_counted(serve, tmp_path):
    server, mport = start(serve, "--threads", "1", env={"METRICS_APPS_STATE_DIR": str(tmp_path)})
    tags = ["a", "b", "c"]
    with ThreadPoolExecutor(max_workers=len(tags)) as pool:
        futures = [pool.submit(request, server, "GET", f"/sleep?s=2&tag={tag}") for tag in tags]
        deadline = time.monotonic() + 10
        while not any((tmp_path / f"{tag}.started").exists() for tag in tags):
            assert time.monotonic() < deadline, "no request reached the app"
            assert server.proc.poll() is None
            time.sleep(0.01)
        # One request holds the only Python thread for 2 s; the other two wait for it.
        queued = scrape_until(mport, lambda m: m.waiting > 0, timeout=1.5)
        assert queued.waiting <= 2, queued.text
        assert queued.busy == 1, queued.text
        # Everything waiting or running is in flight.
        assert queued.in_flight >= queued.waiting + queued.busy, queued.text
        assert [f.result(timeout=30).status for f in futures] == [200] * 3

    after = scrape_until(mport, lambda m: m.count >= 3 and m.in_flight == 0 and m.busy == 0)
    assert after.waiting == 0
    assert after.requests("GET", "2xx") == 3


def test_scrape_does_not_wait_for_python(serve, tmp_path):
    server, mport = start(serve, "--threads", "1", env={"METRICS_APPS_STATE_DIR": str(tmp_path)})
    with ThreadPoolExecutor(max_workers=2) as pool:
        hold = pool.submit(request, server, "GET", "/sleep?s=5&tag=hold")
        wait_for_file(str(tmp_path / "hold.started"), server.proc)
        # A second request queues behind the first: the pool is full and has a backlog.
        queued = pool.submit(request, server, "GET", "/sleep?s=0&tag=queued")
        time.sleep(0.1)

        started = time.monotonic()
        metrics = scrape(mport, timeout=4.0)
        elapsed = time.monotonic() - started

        assert not hold.done(), "the slow request ended before the scrape: the test proves nothing"
        assert elapsed < 1.0, f"a scrape took {elapsed:.2f}s while the only Python thread was busy"
        assert metrics.busy == 1
        assert metrics.in_flight >= 1
        assert hold.result(timeout=20).status == 200
        assert queued.result(timeout=20).status == 200


@pytest.mark.parametrize("path", ["/", "/metricsx", "/metrics/", "/metrics/extra", "/favicon.ico", "/ok"])
def test_metrics_port_answers_404_elsewhere(serve, path):
    server, mport = start(serve)
    status, _, _ = http_get(mport, path)
    assert status == 404
    # The app's port is the app's, even for /metrics.
    resp = request(server, "GET", "/metrics")
    assert resp.status == 200 and resp.body == b"app:/metrics"
    # 404s on the metrics port are not requests either.
    metrics = scrape_until(mport, lambda m: m.requests_total() >= 1)
    assert metrics.requests_total() == 1


def _listening_ports(pid):
    """TCP ports in LISTEN state on sockets held by process pid (Linux /proc)."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in (f"/proc/{pid}/net/tcp", f"/proc/{pid}/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and inode in inodes:
                        ports.add(int(local.rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


def test_no_metrics_listener_without_the_flag(serve):
    metrics_port = free_port()
    server = serve(APP)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", metrics_port), timeout=2.0).close()
    resp = request(server, "GET", "/metrics")
    assert resp.status == 200 and resp.body == b"app:/metrics"
    if os.path.isdir(f"/proc/{server.proc.pid}/fd"):
        assert _listening_ports(server.proc.pid) == {server.port}


def test_metrics_listener_is_the_only_extra_socket(serve):
    server, mport = start(serve)
    if not os.path.isdir(f"/proc/{server.proc.pid}/fd"):
        pytest.skip("needs Linux /proc")
    assert _listening_ports(server.proc.pid) == {server.port, mport}
