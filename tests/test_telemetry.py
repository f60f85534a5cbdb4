"""Telemetry: log formats, trace correlation, the app's logging, the access log and the log
writer that keeps all of it off the request path.

The app is tests/apps/telemetry_apps.py. Log lines are written by a background thread, so
most tests stop the server (SIGTERM flushes the queue) before they read its output.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import APPS, free_port, wait_for_port
from test_http1 import RawConn, get

APP = "telemetry_apps:app"
APP_FILE = APPS / "telemetry_apps.py"
# The line of the app's logging call in /log, found by its marker comment.
LOG_CALL_LINE = next(
    number for number, line in enumerate(APP_FILE.read_text().splitlines(), 1) if "# LOG-CALL" in line
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"traceparent: 00-{TRACE_ID}-{SPAN_ID}-01"
LEGACY_TRACE_ID = "105445aa7843bc8bf206b12000100000"

TRACE_KEY = "logging.googleapis.com/trace"
SPAN_KEY = "logging.googleapis.com/spanId"
SAMPLED_KEY = "logging.googleapis.com/trace_sampled"
SOURCE_KEY = "logging.googleapis.com/sourceLocation"
TRACE_FIELDS = (TRACE_KEY, SPAN_KEY, SAMPLED_KEY)

SEVERITIES = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
TEXT_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)\] \[(\d+)\] \[(DEBUG|INFO|WARNING|ERROR|CRITICAL)\] (.*)$"
)
LATENCY = re.compile(r"^\d+\.\d+s$")
# gunicorn's %(t)s without its brackets: the combined log format's time.
GUNICORN_TIME = re.compile(r"^\d\d/(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/\d{4}:\d\d:\d\d:\d\d \+0000$")
DEFAULT_ACCESS_LINE = re.compile(
    r'^(?P<h>\S+) - - \[(?P<t>[^\]]+)\] "(?P<r>[^"]*)" (?P<s>\d{3}) (?P<b>\d+|-) "(?P<f>[^"]*)" "(?P<a>[^"]*)"$'
)
ACCESS_KEYS = {"severity", "message", "time", "httpRequest"}
HTTP_REQUEST_KEYS = {
    "requestMethod", "requestUrl", "status", "responseSize", "userAgent", "remoteIp",
    "protocol", "referer", "latency",
}
APP_LOG_KEYS = {"severity", "message", "time", "logger", SOURCE_KEY}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Nothing from the outer environment may choose the log format or the project."""
    for name in ("K_SERVICE", "GOOGLE_CLOUD_PROJECT", "COLDBREW_LOG_FORMAT", "COLDBREW_GCP_PROJECT",
                 "COLDBREW_ACCESS_LOGFILE", "COLDBREW_ACCESS_LOGFORMAT", "COLDBREW_APP_LOG_HANDLER",
                 "COLDBREW_LOG_LEVEL", "COLDBREW_THREADS"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def request(server, path, headers=(), method="GET"):
    """One request on its own connection; returns the parsed response."""
    with RawConn.open(server) as conn:
        conn.send(get(path, method=method, headers=list(headers)))
        return conn.read_response(method)


def raw_request(server, raw):
    with RawConn.open(server) as conn:
        conn.send(raw)
        return conn.read_response()


def lines_of(text):
    """Lines split on LF only (str.splitlines would also split on U+0085 and friends)."""
    if isinstance(text, bytes):
        parts = text.split(b"\n")
        assert parts[-1] == b"", f"output does not end with a newline: {text[-200:]!r}"
    else:
        parts = text.split("\n")
        assert parts[-1] == "", f"output does not end with a newline: {text[-200:]!r}"
    return parts[:-1]


def json_lines(text):
    """Every line parsed as a JSON object; fails on the first line that is not one."""
    entries = []
    for line in lines_of(text):
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"line is not JSON: {line!r}\nin:\n{text}")
        assert isinstance(entry, dict), f"line is not a JSON object: {line!r}"
        entries.append(entry)
    return entries


def check_json_entry(entry):
    assert entry.get("severity") in SEVERITIES, entry
    assert isinstance(entry.get("message"), str), entry
    stamp = entry.get("time")
    assert isinstance(stamp, str) and RFC3339_Z.match(stamp), entry
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(datetime.now(timezone.utc) - when) < timedelta(minutes=10), entry


def app_lines(entries, logger="app"):
    return [e for e in entries if e.get("logger") == logger]


def find_one(entries, predicate, what):
    found = [e for e in entries if predicate(e)]
    assert len(found) == 1, f"expected exactly one {what}, found {len(found)}: {entries}"
    return found[0]


def app_message(entries, message):
    return find_one(entries, lambda e: e.get("logger") == "app" and e.get("message") == message,
                    f"app line {message!r}")


def assert_trace(entry, trace_id, span_id, sampled=True, project="proj"):
    if project:
        assert entry.get(TRACE_KEY) == f"projects/{project}/traces/{trace_id}", entry
    else:
        assert TRACE_KEY not in entry, entry
    assert entry.get(SPAN_KEY) == span_id, entry
    assert entry.get(SAMPLED_KEY) is sampled, entry


def assert_no_trace(entry):
    present = [k for k in TRACE_FIELDS if k in entry]
    assert not present, f"unexpected trace fields {present}: {entry}"


def json_server(serve, *args, project="proj", env=None):
    extra = ["--gcp-project", project] if project else []
    return serve(APP, "--log-format", "json", *extra, *args, env=env)


# --------------------------------------------------------------------------------------
# Log formats
# --------------------------------------------------------------------------------------


def test_json_format_every_stderr_line_is_a_json_object(serve):
    server = serve(APP, "--log-format", "json")
    assert request(server, "/ok").status == 200
    assert request(server, "/log?tag=j", [TRACEPARENT]).status == 200
    assert request(server, "/exception", [TRACEPARENT]).status == 200
    assert request(server, "/raise").status == 500
    assert server.stop() == 0
    entries = json_lines(server.stderr)
    for entry in entries:
        check_json_entry(entry)
    messages = [e["message"] for e in entries]
    assert any("serving WSGI app" in m for m in messages), messages
    assert any(m == "shutdown complete" for m in messages), messages
    assert app_message(entries, "hello from the app tag=j")["severity"] == "INFO"


def test_k_service_makes_json_the_default(serve):
    server = serve(APP, env={"K_SERVICE": "x"})
    assert request(server, "/log?tag=k", [TRACEPARENT]).status == 200
    assert server.stop() == 0
    entries = json_lines(server.stderr)
    for entry in entries:
        check_json_entry(entry)
    assert any(e["message"] == "shutdown complete" for e in entries), entries
    # The app's handler is installed in JSON mode by default.
    assert app_message(entries, "hello from the app tag=k")["severity"] == "INFO"


@pytest.mark.parametrize(
    "args, env",
    [((), None), ((), {"K_SERVICE": ""}), (("--log-format", "text"), {"K_SERVICE": "x"})],
    ids=["no-k-service", "empty-k-service", "explicit-text-on-cloud-run"],
)
def test_text_format(serve, args, env):
    server = serve(APP, *args, env=env)
    assert request(server, "/ok").status == 200
    assert server.stop() == 0
    lines = lines_of(server.stderr)
    assert lines, "no log lines at all"
    for line in lines:
        m = TEXT_LINE.match(line)
        assert m, f"not a text log line: {line!r}\nin:\n{server.stderr}"
        assert int(m.group(2)) == server.proc.pid, line
        assert not line.startswith("{"), line
    assert any(line.endswith("] shutdown complete") for line in lines), lines


# --------------------------------------------------------------------------------------
# Trace correlation of the app's log records
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "flag"])
def test_app_log_inside_request_carries_trace_and_source_location(serve, how):
    if how == "env":
        server = serve(APP, "--log-format", "json", env={"GOOGLE_CLOUD_PROJECT": "proj"})
    else:
        server = serve(APP, "--log-format", "json", "--gcp-project", "proj")
    assert request(server, "/log?tag=t1", [TRACEPARENT]).status == 200
    assert server.stop() == 0
    entry = app_message(json_lines(server.stderr), "hello from the app tag=t1")
    check_json_entry(entry)
    assert entry["severity"] == "INFO"
    assert entry["logger"] == "app"
    assert_trace(entry, TRACE_ID, SPAN_ID, sampled=True)
    source = entry.get(SOURCE_KEY)
    assert isinstance(source, dict), entry
    assert os.path.samefile(source["file"], APP_FILE), source
    assert str(source["line"]) == str(LOG_CALL_LINE), source
    assert source["function"] == "log_hello", source


def test_traceparent_not_sampled(serve):
    server = json_server(serve)
    header = f"traceparent: 00-{TRACE_ID}-{SPAN_ID}-00"
    assert request(server, "/log?tag=ns", [header]).status == 200
    assert server.stop() == 0
    assert_trace(app_message(json_lines(server.stderr), "hello from the app tag=ns"), TRACE_ID, SPAN_ID, sampled=False)


@pytest.mark.parametrize("decimal, span", [("1", "0000000000000001"), ("1234567890123", "0000011f71fb04cb")])
def test_legacy_cloud_trace_header(serve, decimal, span):
    assert f"{int(decimal):016x}" == span
    server = json_server(serve)
    header = f"X-Cloud-Trace-Context: {LEGACY_TRACE_ID}/{decimal};o=1"
    assert request(server, "/log?tag=legacy", [header]).status == 200
    assert server.stop() == 0
    entry = app_message(json_lines(server.stderr), "hello from the app tag=legacy")
    assert_trace(entry, LEGACY_TRACE_ID, span, sampled=True)


def test_traceparent_wins_over_legacy_header(serve):
    server = json_server(serve)
    headers = [f"X-Cloud-Trace-Context: {LEGACY_TRACE_ID}/1;o=1", TRACEPARENT]
    assert request(server, "/log?tag=both", headers).status == 200
    assert server.stop() == 0
    assert_trace(app_message(json_lines(server.stderr), "hello from the app tag=both"), TRACE_ID, SPAN_ID)


def test_no_trace_header_no_trace_fields(serve):
    server = json_server(serve)
    assert request(server, "/log?tag=none").status == 200
    assert server.stop() == 0
    entries = json_lines(server.stderr)
    assert_no_trace(app_message(entries, "hello from the app tag=none"))
    for entry in entries:
        assert_no_trace(entry)


def test_no_project_no_trace_key_but_span_id(serve):
    server = json_server(serve, project=None)
    assert request(server, "/log?tag=noproj", [TRACEPARENT]).status == 200
    assert server.stop() == 0
    entry = app_message(json_lines(server.stderr), "hello from the app tag=noproj")
    assert_trace(entry, TRACE_ID, SPAN_ID, sampled=True, project=None)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_environ_trace_id(serve, log_format):
    server = serve(APP, "--log-format", log_format)
    assert request(server, "/trace-id", [TRACEPARENT]).body == TRACE_ID.encode()
    legacy = f"X-Cloud-Trace-Context: {LEGACY_TRACE_ID.upper()}/7;o=1"
    assert request(server, "/trace-id", [legacy]).body == LEGACY_TRACE_ID.encode()
    assert request(server, "/trace-id", [legacy, TRACEPARENT]).body == TRACE_ID.encode()
    assert request(server, "/trace-id").body == b"<absent>"
    assert request(server, "/trace-id", ["traceparent: garbage"]).body == b"<absent>"


def test_thread_pool_requests_keep_their_own_trace(serve):
    server = json_server(serve, "--threads", "4")
    traces = {f"t{i}": (f"{i + 1:032x}", f"{i + 1:016x}") for i in range(8)}

    def one(tag):
        trace_id, span_id = traces[tag]
        return request(server, f"/concurrent?tag={tag}", [f"traceparent: 00-{trace_id}-{span_id}-01"])

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, traces))
    assert [(r.status, r.body) for r in responses] == [(200, tag.encode()) for tag in traces]
    # Then requests without a trace, on the same threads: nothing stale may leak into them.
    for i in range(8):
        assert request(server, f"/log?tag=after{i}").status == 200
    assert server.stop() == 0
    entries = json_lines(server.stderr)
    for tag, (trace_id, span_id) in traces.items():
        for step in ("before", "after"):
            entry = app_message(entries, f"concurrent tag={tag} step={step}")
            assert_trace(entry, trace_id, span_id)
    for i in range(8):
        assert_no_trace(app_message(entries, f"hello from the app tag=after{i}"))


def test_logger_exception_message_has_traceback(serve):
    server = json_server(serve)
    assert request(server, "/exception?tag=exc", [TRACEPARENT]).status == 200
    assert server.stop() == 0
    entries = json_lines(server.stderr)
    entry = find_one(entries, lambda e: e.get("message", "").startswith("caught a failure tag=exc"), "exception line")
    assert entry["severity"] == "ERROR"
    assert entry["logger"] == "app"
    assert "Traceback (most recent call last)" in entry["message"]
    assert "ZeroDivisionError: division by zero" in entry["message"]
    assert_trace(entry, TRACE_ID, SPAN_ID)


def test_unhandled_exception_logs_error_with_traceback(serve):
    server = json_server(serve)
    assert request(server, "/raise", [TRACEPARENT]).status == 500
    assert server.stop() == 0
    entries = json_lines(server.stderr)
    entry = find_one(entries, lambda e: "RuntimeError: telemetry_apps deliberate failure" in e.get("message", ""),
                     "error line")
    assert entry["severity"] == "ERROR"
    assert "Traceback (most recent call last)" in entry["message"]
    assert "logger" not in entry, "the server's own line, not an app record"
    assert_trace(entry, TRACE_ID, SPAN_ID)


def test_app_log_handler_off(serve):
    server = json_server(serve, "--app-log-handler", "off")
    assert request(server, "/warn?tag=off", [TRACEPARENT]).status == 200
    assert request(server, "/log?tag=off", [TRACEPARENT]).status == 200
    assert server.stop() == 0
    json_entries = []
    plain = []
    for line in lines_of(server.stderr):
        try:
            json_entries.append(json.loads(line))
        except ValueError:
            plain.append(line)
    assert not app_lines(json_entries), json_entries
    assert not [e for e in json_entries if "tag=off" in e.get("message", "")], json_entries
    # The record went wherever Python's own logging sends it (its last-resort handler).
    assert "app warning tag=off" in plain, server.stderr
    # coldbrew's own lines are still JSON.
    assert any(e.get("message") == "shutdown complete" for e in json_entries), server.stderr


# --------------------------------------------------------------------------------------
# Access log
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_log_off_by_default(serve, log_format):
    server = serve(APP, "--log-format", log_format)
    for _ in range(3):
        assert request(server, "/bytes?n=5").status == 200
    assert server.stop() == 0
    assert server.stdout == ""
    assert "/bytes" not in server.stderr


def test_access_log_text_default_format(serve):
    server = serve(APP, "--access-logfile", "-")
    headers = ["Referer: http://ref.example/page", "User-Agent: tester/1.0 (telemetry)"]
    assert request(server, "/bytes?n=5", headers).status == 200
    assert request(server, "/status?code=404").status == 404
    assert server.stop() == 0
    lines = lines_of(server.stdout)
    assert len(lines) == 2, server.stdout
    m = DEFAULT_ACCESS_LINE.match(lines[0])
    assert m, lines[0]
    assert m["h"] == "127.0.0.1"
    assert GUNICORN_TIME.match(m["t"]), m["t"]
    assert m["r"] == "GET /bytes?n=5 HTTP/1.1"
    assert m["s"] == "200"
    assert m["b"] == "5"
    assert m["f"] == "http://ref.example/page"
    assert m["a"] == "tester/1.0 (telemetry)"
    m = DEFAULT_ACCESS_LINE.match(lines[1])
    assert m, lines[1]
    assert (m["r"], m["s"], m["b"], m["f"], m["a"]) == ("GET /status?code=404 HTTP/1.1", "404", "-", "-", "-")
    # The access log is not mixed into stderr.
    assert "/bytes" not in server.stderr


def test_access_log_custom_format(serve):
    fmt = "%(m)s %(U)s %(q)s %(s)s %(B)s %({x-req}i)s %({content-type}o)s"
    server = serve(APP, "--access-logfile", "-", "--access-logformat", fmt)
    assert request(server, "/bytes?n=3&k=v", ["X-Req: abc-123"]).status == 200
    assert request(server, "/status?code=204", method="DELETE").status == 204
    assert server.stop() == 0
    assert lines_of(server.stdout) == [
        "GET /bytes n=3&k=v 200 3 abc-123 text/plain",
        "DELETE /status code=204 204 0 - -",
    ]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_logfile_path(serve, tmp_path, log_format):
    path = tmp_path / "access.log"
    server = serve(APP, "--log-format", log_format, "--access-logfile", str(path))
    for i in range(5):
        assert request(server, f"/bytes?n={i}").status == 200
    assert server.stop() == 0
    assert server.stdout == ""
    lines = lines_of(path.read_text())
    assert len(lines) == 5, lines
    for i, line in enumerate(lines):
        if log_format == "json":
            assert json.loads(line)["httpRequest"]["requestUrl"] == f"/bytes?n={i}"
        else:
            assert f'"GET /bytes?n={i} HTTP/1.1" 200' in line, line


def test_access_log_json_http_request(serve):
    server = json_server(serve, "--access-logfile", "-")
    headers = [TRACEPARENT, "Referer: http://ref.example/", "User-Agent: tester/2.0"]
    assert request(server, "/bytes?n=5", headers).status == 200
    assert request(server, "/status?code=404", [TRACEPARENT]).status == 404
    assert request(server, "/raise", [TRACEPARENT]).status == 500
    assert request(server, "/ok").status == 200
    assert server.stop() == 0
    entries = json_lines(server.stdout)
    assert len(entries) == 4, server.stdout
    for entry in entries:
        check_json_entry(entry)
        assert set(entry["httpRequest"]) <= HTTP_REQUEST_KEYS, entry
        assert LATENCY.match(entry["httpRequest"]["latency"]), entry
    ok, missing, boom, plain = entries

    req = ok["httpRequest"]
    assert req["requestMethod"] == "GET"
    assert req["requestUrl"] == "/bytes?n=5"
    assert req["status"] == 200 and type(req["status"]) is int
    assert req["responseSize"] == "5"
    assert req["userAgent"] == "tester/2.0"
    assert req["remoteIp"] == "127.0.0.1"
    assert req["protocol"] == "HTTP/1.1"
    assert req["referer"] == "http://ref.example/"
    assert ok["severity"] == "INFO"
    assert_trace(ok, TRACE_ID, SPAN_ID)

    assert missing["httpRequest"]["status"] == 404
    assert missing["severity"] == "WARNING"
    assert_trace(missing, TRACE_ID, SPAN_ID)

    assert boom["httpRequest"]["status"] == 500
    assert boom["severity"] == "ERROR"
    assert_trace(boom, TRACE_ID, SPAN_ID)

    assert plain["severity"] == "INFO"
    assert_no_trace(plain)
    assert set(plain) == ACCESS_KEYS, plain


def test_access_entry_time_is_when_the_request_began_and_latency_covers_the_app(serve):
    """The entry's time and latency are derived from the connection's clock readings, not read
    per entry: the time must still be the wall-clock time the request began, to the
    millisecond, and the latency the whole time the app took."""
    server = json_server(serve, "--access-logfile", "-")
    sent = time.time()
    assert request(server, "/sleep?ms=300").status == 200
    answered = time.time()
    assert server.stop() == 0
    [entry] = json_lines(server.stdout)
    began = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
    # The entry's time is truncated to the millisecond; the client's clock is read around it.
    assert sent - 0.001 <= began <= answered - 0.3, (sent, began, answered)
    latency = float(entry["httpRequest"]["latency"].rstrip("s"))
    assert 0.3 <= latency <= answered - sent, (latency, answered - sent)


def test_access_log_time_is_gunicorns_and_when_the_request_began(serve):
    """%(t)s is gunicorn's `[02/Dec/2026:14:12:19 +0000]`, brackets included, in any format,
    and names the second the request began, not the one it ended in."""
    server = serve(APP, "--access-logfile", "-", "--access-logformat", "%(t)s|%(U)s")
    times = []
    for _ in range(3):
        sent = time.time()
        assert request(server, "/sleep?ms=1100").status == 200
        times.append((sent, time.time()))
    assert server.stop() == 0
    lines = lines_of(server.stdout)
    assert len(lines) == 3, lines
    for line, (sent, answered) in zip(lines, times):
        stamp, path = line.split("|")
        assert path == "/sleep", line
        assert stamp.startswith("[") and stamp.endswith("]"), line
        assert GUNICORN_TIME.match(stamp[1:-1]), line
        began = datetime.strptime(stamp, "[%d/%b/%Y:%H:%M:%S %z]").timestamp()
        # Whole seconds: the second the request began is at or before it was sent, and more
        # than a second before the answer.
        assert int(sent) <= began <= sent + 0.1 and began < answered - 1, (line, sent, answered)


# --------------------------------------------------------------------------------------
# Hostile input
# --------------------------------------------------------------------------------------

INJECTION = 'x", "severity": "EMERGENCY", "logger": "forged"}{"y": "z'
HOSTILE_REQUESTS = [
    b"GET /a%1b[31m%0aX HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /ok HTTP/1.1\r\nHost: x\r\nUser-Agent: \xff\xfe\x9b31m\x85z\r\nReferer: \x80\xc3(\r\n\r\n",
    b"GET /ok HTTP/1.1\r\nHost: x\r\nUser-Agent: " + INJECTION.encode() + b"\r\nReferer: " + INJECTION.encode() + b"\r\n\r\n",
    b"GET /raise-path%1b[31m%0aFORGED HTTP/1.1\r\nHost: x\r\n\r\n",
]


def test_hostile_input_json(serve, tmp_path):
    path = tmp_path / "access.log"
    server = json_server(serve, "--access-logfile", str(path))
    statuses = [raw_request(server, raw).status for raw in HOSTILE_REQUESTS]
    assert statuses == [200, 200, 200, 500]
    assert request(server, "/log-header", [f"X-Evil: {INJECTION}"]).status == 200
    assert server.stop() == 0

    access = path.read_bytes()
    assert b"\x1b" not in access
    entries = json_lines(access.decode("utf-8"))
    assert len(entries) == len(HOSTILE_REQUESTS) + 1, entries
    for entry in entries:
        check_json_entry(entry)
        assert set(entry) == ACCESS_KEYS, entry
        assert set(entry["httpRequest"]) <= HTTP_REQUEST_KEYS, entry
    assert entries[0]["httpRequest"]["status"] == 200
    assert "31m" in entries[0]["httpRequest"]["requestUrl"]
    assert isinstance(entries[1]["httpRequest"]["userAgent"], str)
    assert entries[2]["httpRequest"]["userAgent"] == INJECTION
    assert entries[2]["httpRequest"]["referer"] == INJECTION
    assert entries[2]["severity"] == "INFO"

    assert "\x1b" not in server.stderr
    log_entries = json_lines(server.stderr)
    for entry in log_entries:
        check_json_entry(entry)
    forged = app_message(log_entries, INJECTION)
    assert set(forged) == APP_LOG_KEYS, forged
    assert forged["severity"] == "INFO"
    error = find_one(log_entries, lambda e: "RuntimeError: bad path" in e["message"], "error line")
    assert "\x1b[31m\nFORGED" in error["message"], "the decoded path survives, escaped, in the JSON"


def test_hostile_input_text_access_line(serve, tmp_path):
    path = tmp_path / "access.log"
    server = serve(APP, "--access-logfile", str(path))
    statuses = [raw_request(server, raw).status for raw in HOSTILE_REQUESTS]
    assert statuses == [200, 200, 200, 500]
    assert server.stop() == 0

    access = path.read_bytes()
    for byte in (b"\x1b", b"\r"):
        assert byte not in access, access
    lines = lines_of(access.decode("utf-8"))
    assert len(lines) == len(HOSTILE_REQUESTS), lines
    for line in lines:
        controls = [c for c in line if unicodedata.category(c) == "Cc"]
        assert not controls, f"raw control characters {controls!r} in {line!r}"
        assert DEFAULT_ACCESS_LINE.match(line) or INJECTION in line, line
    # The server's own text lines escape terminal escapes too.
    assert "\x1b" not in server.stderr


# --------------------------------------------------------------------------------------
# The log writer: off the request path, nothing lost
# --------------------------------------------------------------------------------------

# The log queue's byte budget (src/telemetry/sink.rs QUEUE_BYTES): access-log lines are
# handed over in batches, so the budget, not the entry count, is what fills first.
QUEUE_BYTES = 1024 * 1024
STALL_REQUESTS = 40000


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_blocked_log_output_stalls_requests_but_loses_nothing(tmp_path, log_format):
    port = free_port()
    env = dict(os.environ)
    env.pop("COLDBREW_CMD_ARGS", None)
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "wb") as stderr_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "coldbrew", "--bind", f"127.0.0.1:{port}", "--threads", "2",
             "--log-format", log_format, "--access-logfile", "-", APP],
            cwd=str(APPS), env=env, stdout=subprocess.PIPE, stderr=stderr_file,
        )
    reader = None
    stalled_at, resumed, notice_before_shutdown = None, False, False
    try:
        wait_for_port(port, proc)
        deadline = time.monotonic() + 45
        completed = []
        stop = threading.Event()
        sock = socket.create_connection(("127.0.0.1", port))

        def send():
            # One keep-alive connection, one request at a time: completion order is request order.
            buf = b""
            for i in range(STALL_REQUESTS):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                sock.sendall(f"GET /r/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                while b"\r\n\r\nok" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                buf = buf[buf.index(b"\r\n\r\nok") + 6:]
                completed.append(i)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        # Nobody reads stdout: wait until requests stop completing (2 s without progress).
        last, last_change, stalled_at = -1, time.monotonic(), None
        while sender.is_alive() and time.monotonic() < deadline - 15:
            time.sleep(0.1)
            if len(completed) != last:
                last, last_change = len(completed), time.monotonic()
            elif time.monotonic() - last_change > 2.0:
                stalled_at = len(completed)
                break
        assert proc.poll() is None, "server died"

        # Start reading stdout late.
        chunks = []
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(65536), b"")),
                                  daemon=True)
        reader.start()
        if stalled_at is not None:
            # The request that was stuck completes once the output drains.
            resume_by = time.monotonic() + 10
            while len(completed) == stalled_at and time.monotonic() < resume_by:
                time.sleep(0.05)
            resumed = len(completed) > stalled_at
        stop.set()
        sender.join(timeout=15)
        assert not sender.is_alive(), "requests did not complete after stdout was drained"
        sock.close()
        # The notice appears once the queue drains, before any shutdown.
        notice_by = time.monotonic() + 10
        while b"the log output was blocked" not in stderr_path.read_bytes() and time.monotonic() < notice_by:
            time.sleep(0.05)
        notice_before_shutdown = b"the log output was blocked" in stderr_path.read_bytes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    out = b"".join(chunks)
    lines = lines_of(out)
    if log_format == "json":
        paths = [json.loads(line)["httpRequest"]["requestUrl"] for line in lines]
    else:
        paths = []
        for line in lines:
            m = DEFAULT_ACCESS_LINE.match(line.decode())
            assert m, line
            paths.append(m["r"].split()[1])
    # Nothing lost, nothing doubled, in order.
    assert paths == [f"/r/{i}" for i in completed], (len(paths), len(completed))

    # Requests kept being served while nobody read stdout, until the queue filled, then stalled.
    assert stalled_at is not None, f"requests never stalled ({len(completed)} completed)"
    served_bytes = sum(len(line) + 1 for line in lines[:stalled_at])
    assert served_bytes >= QUEUE_BYTES, (stalled_at, served_bytes)
    assert resumed, "the stalled request did not complete after stdout was drained"
    stderr = stderr_path.read_bytes().decode()
    assert notice_before_shutdown, stderr
    notice = [line for line in lines_of(stderr) if "the log output was blocked" in line]
    assert len(notice) >= 1, stderr
    if log_format == "json":
        # In JSON mode every stderr line is a JSON object, this notice included.
        for entry in json_lines(stderr):
            check_json_entry(entry)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_sigterm_flushes_access_log(serve, log_format):
    n = 300
    server = serve(APP, "--log-format", log_format, "--access-logfile", "-")
    with RawConn.open(server) as conn:
        for i in range(n):
            conn.send(get(f"/r/{i}"))
            assert conn.read_response().status == 200
        assert server.stop() == 0  # SIGTERM right after the last response
    lines = lines_of(server.stdout)
    if log_format == "json":
        paths = [json.loads(line)["httpRequest"]["requestUrl"] for line in lines]
    else:
        paths = [DEFAULT_ACCESS_LINE.match(line)["r"].split()[1] for line in lines]
    assert paths == [f"/r/{i}" for i in range(n)]
    assert "shutdown complete" in server.stderr
