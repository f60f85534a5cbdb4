"""Requests the server answers itself are in the access log and the metrics, as the app's are.

Whoever refuses a request (hyper's parser, coldbrew's checks, the body read ahead, the
deadline), the access log gets one entry with its status and whatever of the request was
parsed before the refusal (`-` for the rest), and the metrics count it by method and status.
Hostile bytes in what the client sent are escaped in both formats, so that no line can be
forged or broken: the text lines are split here by their quoting, the JSON ones parsed.

The app is tests/apps/telemetry_apps.py.
"""

import json
import re
import socket
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import free_port, wait_for_port
from test_http1 import RawConn
from test_metrics import scrape_until

APP = "telemetry_apps:app"
UA = "refusal-test/1.0"
GUNICORN_TIME = re.compile(r"^\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000\]$")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in ("K_SERVICE", "GOOGLE_CLOUD_PROJECT", "COLDBREW_LOG_FORMAT", "COLDBREW_GCP_PROJECT",
                 "COLDBREW_ACCESS_LOGFILE", "COLDBREW_ACCESS_LOGFORMAT", "COLDBREW_TIMEOUT",
                 "COLDBREW_THREADS", "COLDBREW_LOG_LEVEL", "COLDBREW_CMD_ARGS"):
        monkeypatch.delenv(name, raising=False)


def head(method, target, *headers, ua=True):
    lines = [f"{method} {target} HTTP/1.1", "Host: x", *([f"User-Agent: {UA}"] if ua else []), *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


LONG_TARGET = "/coldbrew-414-" + "a" * 5000
HYPER_LONG_TARGET = "/hyper-414-" + "b" * 70000
TLS_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)) + b"\r\n\r\n"


class Case:
    """A request the server refuses: what is sent, the answer, and what the entry must say.
    `method`, `target`, `ua` are the entry's fields (None: written `-`, or left out of JSON)."""

    def __init__(self, name, raw, status, method, target, ua=UA, then=None, deadline_status=None):
        self.name, self.raw, self.status = name, raw, status
        self.method, self.target, self.ua = method, target, ua
        self.then = then  # bytes sent after a pause (a body that stalls)
        self.deadline_status = deadline_status

    @property
    def protocol(self):
        return None if self.method is None else "HTTP/1.1"


CASES = [
    # coldbrew's checks (src/http/checks.rs)
    Case("duplicate-host", head("GET", "/dup-host?q=1", "Host: y"), 400, "GET", "/dup-host?q=1"),
    Case("long-target", head("GET", LONG_TARGET), 414, "GET", LONG_TARGET),
    Case("long-field", head("GET", "/long-field", "X-Big: " + "c" * 9000), 431, "GET", "/long-field"),
    Case("expectation", head("POST", "/expect", "Expect: teapot", "Content-Length: 1"), 417, "POST", "/expect"),
    Case("transfer-coding", head("POST", "/coding", "Transfer-Encoding: br, chunked"), 501, "POST", "/coding"),
    # forwarding headers from a trusted peer that contradict each other
    Case("bad-forwarding", head("GET", "/forwarded", "X-Forwarded-Proto: gopher"), 400, "GET", "/forwarded"),
    # the body, declared or read ahead (src/wsgi/mod.rs)
    Case("declared-too-large", head("POST", "/declared", "Content-Length: 100"), 413, "POST", "/declared"),
    Case("read-ahead-too-large", head("POST", "/read-ahead", "Transfer-Encoding: chunked") + b"14\r\n" + b"d" * 20
         + b"\r\n0\r\n\r\n", 413, "POST", "/read-ahead"),
    Case("bad-chunk", head("POST", "/bad-chunk", "Transfer-Encoding: chunked") + b"zz\r\n\r\n", 400, "POST",
         "/bad-chunk"),
    # --body-timeout 1; under --timeout 0.5 the deadline comes first, and answers 408 too
    Case("stalled-body", head("POST", "/stalled", "Content-Length: 10") + b"abc", 408, "POST", "/stalled"),
    # hyper's parser: coldbrew's service is never called
    Case("hyper-bad-field", head("GET", "/hyper-400", "Bad Field"), 400, "GET", "/hyper-400", ua=None),
    Case("hyper-uri-too-long", head("GET", HYPER_LONG_TARGET), 414, "GET", HYPER_LONG_TARGET[:200] + "...",
         ua=None),
    Case("hyper-too-many-fields", head("GET", "/hyper-431", *(f"X-F{i}: v" for i in range(120))), 431, "GET",
         "/hyper-431", ua=None),
]


def send_case(server, case):
    with RawConn.open(server, timeout=15.0) as conn:
        conn.send(case.raw)
        if case.then is not None:
            time.sleep(0.2)
            conn.send(case.then)
        return conn.read_response().status


def send_tls_hello(server):
    """A TLS ClientHello to a cleartext port: no method, target or protocol to be read."""
    with RawConn.open(server) as conn:
        conn.send(TLS_HELLO)
        reply = conn.read_to_close()
    return int(reply.split()[1]) if reply else None


def split_text_line(line):
    """A text line's fields, split as a log tool splits the combined format: on spaces,
    with "..." and [...] each one field. Fails if a quote or bracket does not close where a
    field ends."""
    fields, i = [], 0
    while i < len(line):
        closer = {'"': '"', "[": "]"}.get(line[i])
        if closer:
            end = line.index(closer, i + 1)
            fields.append(line[i + 1 : end])
            i = end + 1
        else:
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            fields.append(line[i:end])
            i = end
        assert i == len(line) or line[i] == " ", f"field does not end at a space at {i}: {line!r}"
        i += 1
    return fields


COMBINED_FIELDS = ("h", "l", "u", "t", "r", "s", "b", "f", "a")


def combined(line):
    fields = split_text_line(line)
    assert len(fields) == len(COMBINED_FIELDS), f"{len(fields)} fields in {line!r}"
    return dict(zip(COMBINED_FIELDS, fields))


def check_time(text):
    assert GUNICORN_TIME.match(f"[{text}]"), text
    when = datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z")
    assert abs(datetime.now(timezone.utc) - when) < timedelta(minutes=5), text


def start(serve, log_format, deadline, *extra):
    metrics_port = free_port()
    args = ["--access-logfile", "-", "--log-format", log_format, "--metrics-bind", f"127.0.0.1:{metrics_port}",
            "--forwarded-allow-ips", "127.0.0.1", "--limit-request-body", "10", "--body-timeout", "1", *extra]
    if deadline:
        args += ["--timeout", "0.5"]
    server = serve(APP, *args)
    wait_for_port(metrics_port, server.proc)
    return server, metrics_port


def expected_counts(cases):
    counts = {}
    for method, status in cases:
        key = (method if method in ("GET", "POST") else "other", f"{status // 100}xx")
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize("deadline", [False, True], ids=["no-timeout", "timeout"])
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_every_refusal_is_logged_and_counted(serve, log_format, deadline):
    server, metrics_port = start(serve, log_format, deadline)
    for case in CASES:
        assert send_case(server, case) == case.status, case.name
    assert send_tls_hello(server) == 400
    sent = [(c.method, c.status) for c in CASES] + [(None, 400)]
    if deadline:
        # The app is still running at the deadline: 504, from src/wsgi/deadline.rs.
        with RawConn.open(server) as conn:
            conn.send(head("GET", "/sleep?ms=1500"))
            assert conn.read_response().status == 504
        sent.append(("GET", 504))
    want = expected_counts(sent)
    scrape_until(metrics_port, lambda m: all(m.requests(*key) == n for key, n in want.items()))
    assert server.stop() == 0

    out = server.stdout
    assert out.endswith("\n") and "\r" not in out
    lines = out.split("\n")[:-1]
    assert len(lines) == len(sent), out[-3000:]
    if log_format == "text":
        entries = [combined(line) for line in lines]
        for e in entries:
            assert (e["h"], e["l"], e["u"], e["f"]) == ("127.0.0.1", "-", "-", "-"), e
            check_time(e["t"])
            assert e["b"] == "-" or int(e["b"]) > 0, e
        by_request = {e["r"]: e for e in entries}
        for case in CASES:
            r = f"{case.method} {case.target} {case.protocol}"
            assert r in by_request, f"{case.name}: no entry {r[:300]!r}"
            e = by_request[r]
            assert e["s"] == str(case.status), (case.name, e)
            assert e["a"] == (case.ua or "-"), (case.name, e)
        tls = by_request[r"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09 - -"]
        assert tls["s"] == "400" and tls["a"] == "-"
        assert tls["b"] == "-"
        if deadline:
            assert by_request["GET /sleep?ms=1500 HTTP/1.1"]["s"] == "504"
    else:
        entries = [json.loads(line) for line in lines]
        by_request = {(e["httpRequest"].get("requestMethod"), e["httpRequest"].get("requestUrl")): e for e in entries}
        for e in entries:
            assert e["httpRequest"]["remoteIp"] == "127.0.0.1", e
            assert e["severity"] == ("WARNING" if e["httpRequest"]["status"] < 500 else "ERROR"), e
        for case in CASES:
            e = by_request.get((case.method, case.target))
            assert e, f"{case.name}: no entry"
            request = e["httpRequest"]
            assert request["status"] == case.status, (case.name, e)
            assert request.get("userAgent") == case.ua, (case.name, e)
            assert request.get("protocol") == "HTTP/1.1", (case.name, e)
            assert e["message"] == f"{case.method} {case.target} {case.status}", (case.name, e)
        [tls] = [e for e in entries if e["httpRequest"]["requestMethod"].startswith("\\x16")]
        assert tls["httpRequest"]["status"] == 400
        assert "requestUrl" not in tls["httpRequest"] and "protocol" not in tls["httpRequest"]
        if deadline:
            assert by_request[("GET", "/sleep?ms=1500")]["httpRequest"]["status"] == 504


def test_the_metrics_port_does_not_log_its_own_refusals(serve):
    server, metrics_port = start(serve, "text", False)
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nBad Field\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert send_case(server, CASES[0]) == 400
    assert server.stop() == 0
    [line] = server.stdout.split("\n")[:-1]
    assert combined(line)["r"] == "GET /dup-host?q=1 HTTP/1.1"


# --------------------------------------------------------------------------------------
# Hostile bytes, served and refused
# --------------------------------------------------------------------------------------

HOSTILE_UA = b'x" "forged\\" \xff\xc3(\x85\x9b31m'
HOSTILE_REFERER = b'"] [forged'
# (raw request, status, who answers); hyper refuses controls, DEL and invalid UTF-8 in the head.
HOSTILE = [
    (b'GET /q"uo\\te?x=\\ HTTP/1.1\r\nHost: x\r\n\r\n', 200, "app"),
    (b"GET /served HTTP/1.1\r\nHost: x\r\nUser-Agent: " + HOSTILE_UA + b"\r\nReferer: " + HOSTILE_REFERER
     + b"\r\n\r\n", 200, "app"),
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 200, "app"),
    (b"GET /dup HTTP/1.1\r\nHost: x\r\nHost: y\r\nUser-Agent: q\"\\\xff\r\n\r\n", 400, "checks"),
    (b'GET /bad\xff\xfe"q HTTP/1.1\r\nHost: x\r\n\r\n', 400, "hyper"),
    (b"GET /a\x1b[2J\x7f HTTP/1.1\r\nHost: x\r\n\r\n", 400, "hyper"),
    (b"GET /esc-ua HTTP/1.1\r\nHost: x\r\nUser-Agent: a\x1b[31m\"\r\n\r\n", 400, "hyper"),
    (b'G"ET\\ /m HTTP/1.1\r\nHost: x\r\n\r\n', 400, "hyper"),
]
# What the text lines must show: every byte outside printable ASCII, and the quote and the
# backslash, as \xNN.
HOSTILE_TEXT = {
    r"GET /q\x22uo\x5cte?x=\x5c HTTP/1.1": ("200", "-", "-"),
    "GET /served HTTP/1.1": ("200", r"\x22] [forged", r"x\x22 \x22forged\x5c\x22 \xff\xc3(\x85\x9b31m"),
    r"GET /caf\xc3\xa9 HTTP/1.1": ("200", "-", "-"),
    "GET /dup HTTP/1.1": ("400", "-", r"q\x22\x5c\xff"),
    r"GET /bad\xff\xfe\x22q HTTP/1.1": ("400", "-", "-"),
    r"GET /a\x1b[2J\x7f HTTP/1.1": ("400", "-", "-"),
    "GET /esc-ua HTTP/1.1": ("400", "-", "-"),
    r"G\x22ET\x5c /m HTTP/1.1": ("400", "-", "-"),
}


def send_hostile(server):
    for raw, status, _ in HOSTILE:
        with RawConn.open(server) as conn:
            conn.send(raw)
            assert conn.read_response().status == status, raw


def test_hostile_bytes_are_escaped_in_text_lines(serve):
    server = serve(APP, "--access-logfile", "-")
    send_hostile(server)
    assert server.stop() == 0
    raw = server.stdout.encode("utf-8", "surrogateescape")
    assert raw.isascii(), raw
    lines = server.stdout.split("\n")[:-1]
    assert len(lines) == len(HOSTILE), server.stdout
    for line in lines:
        assert all(0x20 <= ord(c) < 0x7f for c in line), line
    entries = {e["r"]: e for e in map(combined, lines)}
    assert {r: (e["s"], e["f"], e["a"]) for r, e in entries.items()} == HOSTILE_TEXT


def test_hostile_bytes_are_encoded_in_json_lines(serve):
    server = serve(APP, "--access-logfile", "-", "--log-format", "json")
    send_hostile(server)
    assert server.stop() == 0
    # Nothing a terminal or a line splitter acts on is left raw: C0, DEL, C1, U+2028/9.
    acted_on = [c for c in server.stdout if c != "\n" and (ord(c) < 0x20 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029")]
    assert not acted_on, acted_on
    lines = server.stdout.split("\n")[:-1]
    assert len(lines) == len(HOSTILE), server.stdout
    entries = [json.loads(line) for line in lines]
    requests = {(e["httpRequest"].get("requestMethod"), e["httpRequest"].get("requestUrl")): e["httpRequest"]
                for e in entries}
    assert set(requests) == {
        # Served and refused by coldbrew's checks: the text as parsed, encoded by JSON.
        ("GET", '/q"uo\\te?x=\\'), ("GET", "/served"), ("GET", "/caf\u00e9"), ("GET", "/dup"),
        # Refused by hyper: UTF-8 as it is, other bytes as the text lines write them.
        ("GET", r"/bad\xff\xfe\x22q"), ("GET", "/a\x1b[2J\x7f"), ("GET", "/esc-ua"), ('G"ET\\', "/m"),
    }
    served = requests[("GET", "/served")]
    # Header bytes are latin-1, as WSGI reads them.
    assert served["userAgent"] == HOSTILE_UA.decode("latin-1")
    assert served["referer"] == HOSTILE_REFERER.decode("latin-1")
    assert requests[("GET", "/dup")]["userAgent"] == 'q"\\\u00ff'
    assert "userAgent" not in requests[("GET", "/esc-ua")]
    for e in entries:
        assert set(e) == {"severity", "message", "time", "httpRequest"}, e
