"""--timeout SECONDS: a per-request deadline.

Past the deadline the client gets 504 at once and the log shows where the app's thread is
stuck; the thread itself runs on until the app returns. The app is tests/apps/slow_app.py,
which records every call it gets in the CALLS_FILE file. Log lines are written by a
background thread, so the tests stop the server before they read its output.
"""

import re
import time

import pytest

from conftest import wait_for_port, free_port
from test_http1 import RawConn, get, post
from test_metrics import scrape, scrape_until
from test_telemetry import SPAN_ID, TRACE_ID, TRACEPARENT, assert_trace, json_lines

APP = "slow_app:app"
GATEWAY_TIMEOUT_BODY = b"Gateway Timeout: the app did not answer within 0.5 s\n"
LOG_LINE_START = re.compile(r"^\[\d{4}-\d\d-\d\dT[\d:.]+Z\] \[\d+\] \[(\w+)\] ", re.M)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Nothing from the outer environment may set a deadline or choose the log format."""
    for name in ("K_SERVICE", "GOOGLE_CLOUD_PROJECT", "COLDBREW_LOG_FORMAT", "COLDBREW_GCP_PROJECT",
                 "COLDBREW_TIMEOUT", "COLDBREW_THREADS", "COLDBREW_LOG_LEVEL", "COLDBREW_CMD_ARGS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def calls(tmp_path):
    return Calls(tmp_path / "calls")


class Calls:
    """What the app recorded: "enter TAG" and "leave TAG" lines."""

    def __init__(self, path):
        self.path = path
        self.env = {"CALLS_FILE": str(path)}

    def lines(self):
        return self.path.read_text().splitlines() if self.path.exists() else []

    def wait_for(self, line, timeout=15.0):
        deadline = time.monotonic() + timeout
        while line not in self.lines():
            if time.monotonic() > deadline:
                pytest.fail(f"the app never recorded {line!r}; it recorded {self.lines()}")
            time.sleep(0.02)


def text_records(stderr):
    """The text-format log as (level, message) pairs; a message keeps its continuation lines."""
    starts = list(LOG_LINE_START.finditer(stderr))
    ends = [m.start() for m in starts[1:]] + [len(stderr)]
    return [(m.group(1), stderr[m.end():end].rstrip("\n")) for m, end in zip(starts, ends)]


def one_record(records, level, predicate, what):
    found = [message for lvl, message in records if lvl == level and predicate(message)]
    assert len(found) == 1, f"expected exactly one {level} {what}, found {len(found)}: {records}"
    return found[0]


def test_stuck_request_gets_504_and_the_log_shows_where(serve, calls):
    server = serve(APP, "--timeout", "0.5", env=calls.env)
    with RawConn.open(server) as conn:
        conn.send(get("/stuck?seconds=3&tag=stuck"))
        response = conn.read_response()
        assert response.status == 504
        assert response.body == GATEWAY_TIMEOUT_BODY
        assert "leave stuck" not in calls.lines(), "the 504 must not wait for the app"
        # Same connection: it is still good for keep-alive, and the server keeps serving.
        conn.send(get("/fast?tag=fast"))
        response = conn.read_response()
        assert response.status == 200
        assert response.body == b"fast"
    calls.wait_for("leave stuck")
    assert server.stop() == 0

    records = text_records(server.stderr)
    message = one_record(records, "ERROR", lambda m: m.startswith("GET /stuck:"), "timeout line")
    assert re.match(r"GET /stuck: no response after \d+\.\d\d s \(--timeout 0\.5\); answered 504", message), message
    lines = message.splitlines()
    traceback_at = lines.index("Traceback (most recent call last):")
    frames = lines[traceback_at + 1:-1]
    assert any(re.search(r'File ".*slow_app\.py", line \d+, in stuck_in_here', f) for f in frames), message
    assert any(re.search(r'File ".*slow_app\.py", line \d+, in app', f) for f in frames), message
    assert "time.sleep(seconds)" in message
    assert lines[-1] == "TimeoutError: GET /stuck did not answer within 0.5 s"
    # The late response is dropped without another error.
    assert [lvl for lvl, _ in records].count("ERROR") == 1, records


def test_a_request_still_queued_at_the_deadline_is_never_run(serve, calls):
    server = serve(APP, "--threads", "1", "--timeout", "0.5", env=calls.env)
    with RawConn.open(server) as stuck, RawConn.open(server) as queued:
        stuck.send(get("/stuck?seconds=3&tag=stuck"))
        calls.wait_for("enter stuck")
        queued.send(get("/fast?tag=queued"))
        response = queued.read_response()
        assert response.status == 504
        assert response.body == GATEWAY_TIMEOUT_BODY
        assert stuck.read_response().status == 504
    calls.wait_for("leave stuck")
    # One thread and a FIFO queue: once this is answered, the queued job has been passed over.
    with RawConn.open(server) as conn:
        conn.send(get("/fast?tag=after"))
        assert conn.read_response().status == 200
    assert calls.lines() == ["enter stuck", "leave stuck", "enter after", "leave after"]
    assert server.stop() == 0

    records = text_records(server.stderr)
    warning = one_record(records, "WARNING", lambda m: m.startswith("GET /fast:"), "queue timeout line")
    assert "still waiting for a free Python thread" in warning
    assert "the app will not be called" in warning
    assert "\n" not in warning, "no stack: no thread ran it"
    one_record(records, "ERROR", lambda m: m.startswith("GET /stuck:"), "timeout line")


def test_a_body_left_to_the_app_closes_the_connection_after_the_504(serve, calls):
    server = serve(APP, "--timeout", "0.5", "--request-buffer", "1K", env=calls.env)
    with RawConn.open(server) as conn:
        # Over --request-buffer: the body stays on the connection for the app to read, so
        # the connection cannot carry another request until the app is done with it.
        conn.send(post("/stuck?seconds=3&tag=stuck", b"x" * 4096))
        response = conn.read_response("POST")
        assert response.status == 504
        assert response.header("connection") == "close"
    calls.wait_for("leave stuck")


def test_json_timeout_line_has_the_stack_and_the_request_trace(serve, calls):
    server = serve(APP, "--timeout", "0.5", "--log-format", "json", "--gcp-project", "proj", env=calls.env)
    with RawConn.open(server) as conn:
        conn.send(get("/stuck?seconds=3&tag=stuck", headers=[TRACEPARENT]))
        assert conn.read_response().status == 504
    calls.wait_for("leave stuck")
    assert server.stop() == 0

    entries = json_lines(server.stderr)
    errors = [e for e in entries if e["severity"] == "ERROR"]
    assert len(errors) == 1, entries
    entry = errors[0]
    message = entry["message"]
    assert message.startswith("GET /stuck: no response after ")
    assert "\nTraceback (most recent call last):\n" in message
    assert re.search(r'File ".*slow_app\.py", line \d+, in stuck_in_here\n', message), message
    assert "logger" not in entry, "the server's own line, not an app record"
    assert_trace(entry, TRACE_ID, SPAN_ID)


def test_a_timed_out_thread_counts_as_busy_until_the_app_returns(serve, calls):
    metrics_port = free_port()
    server = serve(APP, "--timeout", "0.5", "--metrics-bind", f"127.0.0.1:{metrics_port}", env=calls.env)
    wait_for_port(metrics_port, server.proc)
    with RawConn.open(server) as conn:
        conn.send(get("/stuck?seconds=3&tag=stuck"))
        assert conn.read_response().status == 504
    metrics = scrape(metrics_port)
    if "leave stuck" not in calls.lines():
        assert metrics.busy == 1, metrics.text
    assert metrics.requests("GET", "5xx") == 1
    calls.wait_for("leave stuck")
    scrape_until(metrics_port, lambda m: m.busy == 0)


def test_a_request_body_still_arriving_at_the_deadline_gets_408(serve, calls):
    server = serve(APP, "--timeout", "0.5", env=calls.env)
    with RawConn.open(server) as conn:
        conn.send(post("/fast?tag=slow-upload", b"0123456789")[:-5])
        response = conn.read_response()
        assert response.status == 408
        assert response.body == b"Request Timeout: the request body did not arrive within 0.5 s\n"
    with RawConn.open(server) as conn:
        conn.send(post("/fast?tag=upload", b"0123456789"))
        assert conn.read_response().status == 200
    assert calls.lines() == ["enter upload", "leave upload"]
    assert server.stop() == 0
    records = text_records(server.stderr)
    warning = one_record(records, "WARNING", lambda m: m.startswith("POST /fast:"), "slow body line")
    assert "request body was still arriving" in warning


def test_no_deadline_by_default(serve, calls):
    server = serve(APP, env=calls.env)
    with RawConn.open(server) as conn:
        conn.send(get("/stuck?seconds=1&tag=slow"))
        response = conn.read_response()
        assert response.status == 200
        assert response.body == b"finished"
    assert server.stop() == 0
    assert not [r for r in text_records(server.stderr) if r[0] in ("WARNING", "ERROR")], server.stderr
