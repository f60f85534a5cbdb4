"""gunicorn's HTTP/1 parser corpus, run against a real coldbrew server.

Each case of the corpus (137 request byte strings from gunicorn's parser tests, with the parse
gunicorn expects; see the format note at the top of the JSON file) is sent as is on a fresh
connection to coldbrew serving tests/apps/conformance_apps.py, which answers with what reached
it as JSON.

- An accept case passes when every expected request reaches the app in order, with the same
  method, target (as PATH_INFO and QUERY_STRING), version, headers and body, the app is called
  exactly that many times, and nothing else on the connection is taken for a request.
- A reject case passes when the client gets the status gunicorn's mapping gives its error
  (400, 414, 431, 501 or 417), the connection is closed, and the app is never called.
- A case that needs a gunicorn parser option runs with coldbrew's equivalent option, or under
  coldbrew's default where that already behaves like the option; otherwise it is skipped,
  with the reason.
- Where coldbrew decided against gunicorn (docs/http.md, "HTTP conformance"), the case checks
  coldbrew's documented behaviour instead and counts as a deviation. One decision is a rule
  rather than a case: gunicorn accepts an HTTP/1.1 request without Host, which coldbrew answers
  400 (RFC 9112 section 3.2); in an accept case with such a request, the requests before it
  must be answered as gunicorn expects, then that one gets the 400 and the connection closes.

The corpus is read from the file named by COLDBREW_CONFORMANCE_CORPUS, else from
shared/conformance/ next to the checkout or under /work; without it the module is skipped
(gunicorn's test data is not copied into this repository). The counts are printed at the
end of the run and written to target/conformance-summary.txt.
"""

import base64
import contextlib
import json
import os
import socket
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest

import conftest
from conftest import ROOT, Server
from test_http1 import RawConn

_CORPUS_NAME = Path("shared") / "conformance" / "gunicorn-http1-requests.json"
_CANDIDATES = [ROOT.parent / _CORPUS_NAME, Path("/work") / _CORPUS_NAME]
CORPUS_PATH = Path(
    os.environ.get("COLDBREW_CONFORMANCE_CORPUS")
    or next((path for path in _CANDIDATES if path.is_file()), _CANDIDATES[0])
)
if not CORPUS_PATH.is_file():
    pytest.skip(f"conformance corpus not found at {CORPUS_PATH}", allow_module_level=True)
CASES = json.loads(CORPUS_PATH.read_text())["cases"]
SUMMARY_PATH = ROOT / "target" / "conformance-summary.txt"

APP = "conformance_apps:app"

# gunicorn's error classes and the status it answers them with (see shared/notes/peers.md).
STATUS_FOR_ERROR = {
    "LimitRequestLine": 414,
    "LimitRequestHeaders": 431,
    "UnsupportedTransferCoding": 501,
    "ExpectationFailed": 417,
}
PARSE_ERROR_STATUS = 400

# gunicorn options and coldbrew's flag for the same limit.
FLAGS = {
    "limit_request_line": "--limit-request-line",
    "limit_request_fields": "--limit-request-fields",
    "limit_request_field_size": "--limit-request-field-size",
    "forwarded_allow_ips": "--forwarded-allow-ips",
}
# Options whose setting is what coldbrew does anyway.
DEFAULT_BEHAVIOUR = {
    ("permit_unconventional_http_method", True): "coldbrew accepts any token as a method",
}
# Options coldbrew has no equivalent for.
UNSUPPORTED = {
    "strip_header_spaces": "coldbrew has no option to accept whitespace before a header's colon (always 400)",
    "casefold_http_method": "coldbrew passes the method on as sent; it has no option to upper-case it",
    "header_map": "coldbrew always drops header names with '_' (gunicorn's default, 'drop'); "
                  "it has no 'dangerous' or 'refuse' mode",
    "permit_obsolete_folding": "coldbrew has no option to unfold obs-fold headers (always 400)",
    "proxy_protocol": "coldbrew does not speak the PROXY protocol",
}

# Cases whose bytes end mid-message: the client closes its side after sending them, as the
# end of the input. (Anywhere else that would read as a client going away.)
NEEDS_EOF = {"invalid/001", "invalid/rfc9112_chunked_missing_final_crlf_01", "valid/099"}

# Where coldbrew decided otherwise than gunicorn: the case id, what coldbrew does instead
# ("reject", status) or ("accept", overrides of the expected requests), and why. Each is
# documented in docs/http.md.
DEVIATIONS = {
    "valid/009": (("reject", 400), "Transfer-Encoding other than chunked last, with a Content-Length: "
                  "RFC 9112 section 6.3 requires a 400 (hyper's parser refuses it; the request also lacks the Host "
                  "HTTP/1.1 requires, and has both Content-Length and Transfer-Encoding)"),
    "valid/014": (("reject", 400), "'\"' is not allowed in a request target (RFC 3986); hyper's parser refuses it (the "
                  "request also lacks the Host HTTP/1.1 requires)"),
    "valid/099": (("reject", 400), "the bytes end 9315 bytes short of the declared Content-Length, then the "
                  "client closes: coldbrew never calls the app with a truncated body"),
    "valid/rfc9112_target_authority_connect_01": (("reject", 501), "a WSGI app cannot open a tunnel: CONNECT is 501"),
    "valid/rfc9112_target_authority_ipv6_01": (("reject", 501), "a WSGI app cannot open a tunnel: CONNECT is 501"),
    "invalid/019": (("reject", 400), "X-Forwarded-Proto: https with X-Forwarded-Ssl: off from a trusted peer: "
                    "coldbrew reads X-Forwarded-For, X-Forwarded-Proto and Forwarded, not X-Forwarded-Ssl, so it "
                    "sees no contradiction; the request is refused only because it lacks the Host HTTP/1.1 requires"),
    "invalid/limit_header_default_01": (
        ("accept", [{"method": "GET", "target": "/", "version": [1, 0], "headers": [["X", "y" * 8187]], "body_b64": ""}]),
        "--limit-request-field-size 0 means no limit of coldbrew's own, as gunicorn's documentation says; "
        "gunicorn's parser applies its default for 0"),
}

HOST_RULE = ("an HTTP/1.1 request without Host is answered 400 and the connection closed (RFC 9112 section 3.2); "
             "gunicorn accepts it")


def lacks_host(request):
    return request["version"] == [1, 1] and not any(name == "HOST" for name, _ in request["headers"])


RESULTS = Counter()
HOST_RULE_CASES = []
SKIP_REASONS = Counter()
FAILURES = []


def case_config(case):
    """(coldbrew flags, skip reason or None) for a case's gunicorn options."""
    flags = []
    for name, value in (case.get("config") or {}).items():
        if name in FLAGS:
            flags += [FLAGS[name], str(value)]
        elif (name, value) in DEFAULT_BEHAVIOUR:
            continue
        else:
            return flags, f"needs gunicorn's {name}={value!r}: {UNSUPPORTED.get(name, 'no equivalent in coldbrew')}"
    return flags, None


@pytest.fixture(scope="module")
def servers():
    started = {}

    def get(flags):
        key = tuple(flags)
        if key not in started:
            started[key] = Server(APP, "--threads", "2", *flags).wait_ready()
        return started[key]

    yield get
    for server in started.values():
        server.stop()
    write_summary()


def write_summary():
    total = sum(RESULTS.values())
    if not total:
        return
    passed = RESULTS["passed"] + RESULTS["deviation"]
    lines = [
        f"conformance corpus ({CORPUS_PATH.name}): {total} cases: {passed} passed "
        f"({RESULTS['passed']} as gunicorn expects, {RESULTS['deviation']} as coldbrew's documented deviation), "
        f"{RESULTS['failed']} failed, {RESULTS['skipped']} skipped",
    ]
    lines += [f"  skipped {count}: {reason}" for reason, count in sorted(SKIP_REASONS.items())]
    lines += [f"  deviation {case_id}: {why}" for case_id, (_, why) in DEVIATIONS.items()]
    if HOST_RULE_CASES:
        lines.append(f"  deviation in {len(HOST_RULE_CASES)} cases ({', '.join(HOST_RULE_CASES)}): {HOST_RULE}")
    lines += [f"  FAILED {failure}" for failure in FAILURES]
    conftest.TERMINAL_SUMMARY.extend(lines)
    SUMMARY_PATH.parent.mkdir(exist_ok=True)
    SUMMARY_PATH.write_text("\n".join(lines) + "\n")


# No headers, so it fits the tightest limits a case sets; HTTP/1.0, so the server closes after.
COUNTER = b"GET /__calls HTTP/1.0\r\n\r\n"


def calls(server):
    """How many times the app has been called so far."""
    return conftest.echo_app_calls(server)


def expected_environ(request):
    """What the echo app should report for one of the corpus's parsed requests."""
    target = request["target"]
    if target.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        target = rest[rest.index("/"):] if "/" in rest else "/"
    target = target.split("#", 1)[0]
    path, _, query = target.partition("?")
    headers = {}
    for name, value in request["headers"]:
        if "_" in name:
            continue  # dropped, never aliased to the '-' spelling
        key = name.replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if key in headers:
            headers[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            headers[key] = value
    return {
        "method": request["method"],
        # Targets in the corpus are bytes as latin-1 code points, as PEP 3333's strings are.
        "path": urllib.parse.unquote_to_bytes(path.encode("latin-1")).decode("latin-1"),
        "query": query,
        "protocol": "HTTP/{}.{}".format(*request["version"]),
        "headers": headers,
        "body_b64": request["body_b64"],
    }


def closes_after(request):
    """Whether the server must close the connection after answering this request."""
    connection = ",".join(v.lower() for n, v in request["headers"] if n == "CONNECTION")
    if request.get("closes") or "close" in connection:
        return True
    return request["version"] == [1, 0] and "keep-alive" not in connection


def read_answers(conn, requests):
    """Each request's answer, in order: a 200 whose environ is what the request should give."""
    for index, request in enumerate(requests):
        resp = conn.read_response()
        assert resp.status == 200, f"request {index + 1}: {resp!r}"
        seen = json.loads(resp.body)
        assert seen.pop("raw_uri") in (None, request["target"])
        assert seen == expected_environ(request), f"request {index + 1}"


@contextlib.contextmanager
def answered(server, raw, requests, needs_eof):
    """A connection that has sent `raw` (then its end, if `needs_eof`) and read each of
    `requests`' answers."""
    with RawConn.open(server) as conn:
        conn.send(raw)
        if needs_eof:
            conn.sock.shutdown(socket.SHUT_WR)
        read_answers(conn, requests)
        yield conn


def check_accept(server, raw, requests, needs_eof):
    before = calls(server)
    with answered(server, raw, requests, needs_eof) as conn:
        if closes_after(requests[-1]):
            rest = conn.read_to_close()
            assert rest == b"", f"bytes after the last response: {rest[:200]!r}"
            after = calls(server)
        else:
            # Nothing left over may be taken for a request: the next thing the server answers
            # is this one, which also says how often the app was called.
            conn.send(COUNTER)
            resp = conn.read_response()
            answer = json.loads(resp.body)
            assert resp.status == 200 and "calls" in answer, f"an extra request was answered: {answer}"
            after = answer["calls"]
    assert after - before == len(requests), "the app was called a different number of times"


def check_accept_then_reject(server, raw, requests, status, needs_eof):
    """The requests before a refused one are answered as expected; then one answer, `status`,
    and the connection closes, with the app called only for those before."""
    before = calls(server)
    with answered(server, raw, requests, needs_eof) as conn:
        check_refusal(conn.read_to_close(), status)
    assert calls(server) == before + len(requests), "the app was called for a rejected request"


def check_reject(server, raw, status, needs_eof):
    before = calls(server)
    with RawConn.open(server) as conn:
        conn.send(raw)
        if needs_eof:
            conn.sock.shutdown(socket.SHUT_WR)
        data = conn.read_to_close()  # returns only once the server has closed the connection
    check_refusal(data, status)
    assert calls(server) == before, "the app was called for a rejected request"


def check_refusal(data, status):
    """`data`, all the server sent before it closed, is one answer with `status`."""
    assert data, "the connection was closed without an answer"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    assert status_line.split(b" ")[1] == str(status).encode(), f"got {status_line!r}, expected {status}"
    length = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:]
              if line.lower().startswith(b"content-length:")]
    assert length and int(length[0]) == len(body), f"one answer, nothing after it: {data[:300]!r}"


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_case(servers, case):
    flags, skip = case_config(case)
    if skip:
        RESULTS["skipped"] += 1
        SKIP_REASONS[skip] += 1
        pytest.skip(skip)
    server = servers(flags)
    raw = base64.b64decode(case["raw_b64"])
    needs_eof = case["id"] in NEEDS_EOF
    deviation = DEVIATIONS.get(case["id"])
    try:
        if deviation:
            (kind, expected), _why = deviation
            if kind == "reject":
                check_reject(server, raw, expected, needs_eof)
            else:
                check_accept(server, raw, expected, needs_eof)
        elif case["expect"] == "accept" and any(lacks_host(r) for r in case["requests"]):
            answered = next(i for i, r in enumerate(case["requests"]) if lacks_host(r))
            check_accept_then_reject(server, raw, case["requests"][:answered], PARSE_ERROR_STATUS, needs_eof)
            HOST_RULE_CASES.append(case["id"])
            deviation = True
        elif case["expect"] == "accept":
            check_accept(server, raw, case["requests"], needs_eof)
        else:
            check_reject(server, raw, STATUS_FOR_ERROR.get(case["error"], PARSE_ERROR_STATUS), needs_eof)
    except BaseException as err:
        RESULTS["failed"] += 1
        FAILURES.append(f"{case['id']}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
        raise
    RESULTS["deviation" if deviation else "passed"] += 1


def test_every_deviation_is_a_corpus_case():
    ids = {c["id"] for c in CASES}
    assert set(DEVIATIONS) <= ids
    assert NEEDS_EOF <= ids
