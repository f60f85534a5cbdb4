"""The server-side requirements of RFC 9112 and RFC 9110, one test per row of the table in
docs/http.md ("RFC requirements"), against a real coldbrew server over raw sockets.

The app is tests/apps/conformance_apps.py: it echoes what reached it as JSON and counts its
calls, so a test can show that a refused request never reached it; its ``/__respond`` route
answers with the status, headers and body a test asks for, for the response-side rows.
Rows another test file already shows name that test in the table instead of repeating it.
"""

import random
import re
import socket
import time
import urllib.parse

import pytest

from conftest import Server
from test_bad_input import COUNTER, calls, chunked, echoed, refused, request, responses
from test_http1 import RawConn

APP = "conformance_apps:app"


@pytest.fixture(scope="module")
def server():
    server = Server(APP, "--threads", "2").wait_ready()
    yield server
    server.stop()


def respond(status="200 OK", headers=(), body="", stream=False):
    """The target of an /__respond request that answers as given."""
    query = [("status", status), ("body", body)] + [("h", h) for h in headers]
    if stream:
        query.append(("stream", "1"))
    return "/__respond?" + urllib.parse.urlencode(query)


def one_exchange(server, raw, method="GET"):
    """Sends `raw` and reads one response, then a pipelined COUNTER's: proves the first
    response was framed exactly (nothing of it is left before the next one)."""
    with RawConn.open(server) as conn:
        conn.send(raw + COUNTER)
        first = conn.read_response(method=method)
        rest = conn.read_to_close()
    assert rest.startswith(b"HTTP/1.0 200 OK\r\n") and b'"calls"' in rest, f"after the first response: {rest[:200]!r}"
    return first


# ---------------------------------------------------------------------------------------------
# Message format (RFC 9112 section 2)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / HTTP/1.1\nHost: example.com\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: example.com\nX: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\n",
        b"GET / HTTP/1.1\nHost: example.com\n\n",
        b"\nGET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ],
    ids=["after-request-line", "after-field", "ending-the-head", "everywhere", "before-request-line"],
)
def test_bare_lf_line_end_is_refused(server, raw):
    # Strict reading of section 2.2 (a recipient MAY take a bare LF for CRLF): a front end that
    # forwards a bare LF inside a value sees one field where a lenient server sees two.
    refused(server, raw, 400)


def test_bare_lf_ending_a_head_sent_in_pieces_is_refused_at_once(server):
    # The refused LF was the head's last byte: the answer must come without more bytes.
    before = calls(server)
    with RawConn.open(server, timeout=5.0) as conn:
        conn.send(b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n")
        time.sleep(0.2)
        conn.send(b"\n")
        resp = conn.read_response()
        assert resp.status == 400
        assert conn.read_to_close() == b""
    assert calls(server) == before


def test_bare_lf_in_a_body_is_data(server):
    body = b"a\nb\n\n"
    got = responses(server, request("/", [f"Content-Length: {len(body)}"], body, method="POST") + COUNTER)
    assert echoed(got[0])["body"] == body
    got = responses(server, request("/", ["Transfer-Encoding: chunked"], chunked(body), method="POST") + COUNTER)
    assert echoed(got[0])["body"] == body


def test_the_raw_check_keeps_step_with_a_long_mixed_pipeline(server):
    # Bodies full of what the raw check looks for in heads, framed three ways, one after the
    # other on one connection: every request answered with its own body, and the head with
    # both framing fields at the end still seen as a head and refused.
    rng = random.Random(9112)
    noise = [b"\n", b"\r\n\r\n", b"Content-Length: 5\r\n", b"Transfer-Encoding: chunked\n", b"0 \r\n", b"\x00"]
    raw, bodies = b"", []
    for i in range(20):
        body = b"".join(rng.choice(noise) + bytes(rng.randrange(256) for _ in range(rng.randrange(20))) for _ in range(5))
        kind = i % 3
        if kind == 0:
            raw += request(f"/{i}", [f"Content-Length: {len(body)}"], body, method="POST")
        elif kind == 1:
            pieces = [body[:7], body[7:]] if len(body) > 7 else [body]
            wire = b"".join(b"%x;n=%d\r\n%s\r\n" % (len(p), n, p) for n, p in enumerate(pieces) if p)
            raw += request(f"/{i}", ["Transfer-Encoding: chunked"], wire + b"0\r\nX-T: 1\r\n\r\n", method="POST")
        else:
            body = b""
            raw += request(f"/{i}")
        bodies.append(body)
    raw += request("/last", ["Transfer-Encoding: chunked", "Content-Length: 5"], b"0\r\n\r\n", method="POST")
    before = calls(server)
    got = responses(server, raw)
    assert [r.status for r in got] == [200] * 20 + [400]
    assert [(echoed(r)["path"], echoed(r)["body"]) for r in got[:20]] == [(f"/{i}", b) for i, b in enumerate(bodies)]
    assert calls(server) == before + 20


@pytest.mark.parametrize("line", [b"X: a\rb", b"X: a\r"], ids=["inside-value", "before-colon-less-lf"])
def test_bare_cr_is_refused(server, line):
    refused(server, b"GET / HTTP/1.1\r\nHost: example.com\r\n" + line + b"\r\n\r\n", 400)


def test_whitespace_before_the_first_field_is_refused(server):
    refused(server, b"GET / HTTP/1.1\r\n Host: example.com\r\n\r\n", 400)
    refused(server, b"GET / HTTP/1.1\r\n\tX: a\r\nHost: example.com\r\n\r\n", 400)


def test_empty_lines_before_a_request_line_are_ignored(server):
    got = responses(server, b"\r\n" + request("/a") + b"\r\n\r\n" + request("/b") + COUNTER)
    assert [echoed(r)["path"] for r in got[:2]] == ["/a", "/b"]
    assert len(got) == 3


@pytest.mark.parametrize("version", [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1", b"HTTPS/1.1"])
def test_versions_other_than_1_0_and_1_1_are_refused(server, version):
    # hyper answers 400 (RFC 9110 section 15.6.6 allows, never requires, a 505).
    refused(server, b"GET / " + version + b"\r\nHost: example.com\r\n\r\n", 400)


# ---------------------------------------------------------------------------------------------
# Request line and target (RFC 9112 section 3)


@pytest.mark.parametrize("line", [b"GET  / HTTP/1.1", b"GET /\tHTTP/1.1", b"GET / HTTP/1.1 ", b" GET / HTTP/1.1"],
                         ids=["two-spaces", "tab", "trailing-space", "leading-space"])
def test_request_line_is_three_words_and_two_single_spaces(server, line):
    refused(server, line + b"\r\nHost: example.com\r\n\r\n", 400)


def test_method_is_case_sensitive_and_passed_on(server):
    got = responses(server, request("/", method="get") + request("/", method="-bl") + COUNTER)
    assert [echoed(r)["method"] for r in got[:2]] == ["get", "-bl"]


def test_http11_request_without_host_is_refused(server):
    resp = refused(server, request("/", host=False), 400)
    assert resp.body == b"Bad Request: an HTTP/1.1 request without a Host header\n"
    assert resp.header("connection") == "close"


def test_http10_request_without_host_is_accepted(server):
    got = responses(server, request("/old", host=False, version="HTTP/1.0"))
    seen = echoed(got[0])
    assert seen["path"] == "/old" and "HTTP_HOST" not in seen["headers"]


@pytest.mark.parametrize(
    "host",
    [b"Host: example.com\r\nHost: example.com", b"Host: a b", b"Host: example.com/x", b"Host: u@example.com",
     b"Host: example.com:http", b"Host: a:1:2", b"Host: ::1", b"Host: [::1]x", b"Host: a%zz"],
    ids=["two", "space", "slash", "userinfo", "named-port", "two-colons", "unbracketed-ipv6", "after-literal", "bad-escape"],
)
def test_more_than_one_or_an_invalid_host_is_refused(server, host):
    refused(server, request("/", [host], host=False), 400)


def test_host_values_of_the_grammar_are_accepted(server):
    for host in ["example.com:8080", "[::1]:8080", "127.0.0.1", "caf%C3%A9.example", ""]:
        got = responses(server, request("/", [f"Host: {host}"], host=False) + COUNTER)
        assert echoed(got[0])["headers"]["HTTP_HOST"] == host


def test_absolute_form_target_is_accepted_and_its_host_must_be_the_hosts(server):
    got = responses(server, request("http://example.com/p/q?x=1") + COUNTER)
    seen = echoed(got[0])
    assert (seen["path"], seen["query"], seen["headers"]["HTTP_HOST"]) == ("/p/q", "x=1", "example.com")
    # The app reads Host; a target naming another host would give it the wrong one.
    resp = refused(server, request("http://other.example/p"), 400)
    assert b"the Host header differs from the target's authority" in resp.body
    got = responses(server, request("http://example.com:8081/old", host=False, version="HTTP/1.0"))
    seen = echoed(got[0])
    assert seen["path"] == "/old"
    # Without a Host field, the target's authority is the host the app sees.
    assert seen["headers"]["HTTP_HOST"] == "example.com:8081"


def test_authority_form_only_with_connect_and_asterisk_only_with_options(server):
    refused(server, request("example.com:80"), 400)
    refused(server, request("*"), 400)
    refused(server, request("example.com:443", method="CONNECT"), 501)
    got = responses(server, request("*", method="OPTIONS") + COUNTER)
    assert echoed(got[0])["path"] == "*"


# ---------------------------------------------------------------------------------------------
# Fields (RFC 9112 section 5, RFC 9110 section 5)


def test_whitespace_between_field_name_and_colon_is_refused(server):
    refused(server, request("/", ["X-A : b"]), 400)
    refused(server, request("/", ["Content-Length\t: 3"], b"abc", method="POST"), 400)


def test_obs_fold_is_refused(server):
    refused(server, request("/", [b"X-A: b\r\n c"]), 400)
    refused(server, request("/", [b"X-A: b\r\n\tc"]), 400)


@pytest.mark.parametrize("value", [b"a\x00b", b"a\rb", b"a\nb"], ids=["nul", "cr", "lf"])
def test_cr_lf_nul_in_a_value_are_refused(server, value):
    refused(server, request("/", [b"X-A: " + value]), 400)


def test_whitespace_around_a_value_is_not_part_of_it(server):
    got = responses(server, request("/", [b"X-A: \t a  b \t"]) + COUNTER)
    assert echoed(got[0])["headers"]["HTTP_X_A"] == "a  b"


# ---------------------------------------------------------------------------------------------
# Message body length (RFC 9112 section 6)


@pytest.mark.parametrize(
    "headers",
    [
        ["Content-Length: 3", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked", "Content-Length: 3"],
        ["Content-Length: 0", "Transfer-Encoding: chunked"],
        ["content-length: 3", "TRANSFER-ENCODING: gzip, chunked"],
    ],
    ids=["length-first", "coding-first", "zero-length", "other-case"],
)
def test_content_length_with_transfer_encoding_is_refused_and_closed(server, headers):
    # Strict reading of section 6.3 (a server MAY frame such a request by the coding alone):
    # whichever framing a front end chose, the bytes after the head never reach the app.
    smuggled = request("/smuggled")
    refused(server, request("/", headers, b"0\r\n\r\n" + smuggled, method="POST"), 400)


def test_content_length_with_transfer_encoding_is_refused_in_a_later_request(server):
    # After a body framed by its length, the next head is still seen as a head.
    first = request("/first", ["Content-Length: 26"], b"Transfer-Encoding: chunked", method="POST")
    second = request("/second", ["Content-Length: 5", "Transfer-Encoding: chunked"], b"0\r\n\r\n", method="POST")
    before = calls(server)
    got = responses(server, first + second)
    assert echoed(got[0])["body"] == b"Transfer-Encoding: chunked"
    assert [r.status for r in got[1:]] == [400]
    assert calls(server) == before + 1


def test_transfer_encoding_on_http10_is_refused(server):
    raw = request("/", ["Transfer-Encoding: chunked"], chunked(b"abc"), method="POST", version="HTTP/1.0")
    refused(server, raw, 400)


@pytest.mark.parametrize("coding, status", [("gzip", 400), ("chunked, gzip", 400), ("chunked, chunked", 400), ("br, chunked", 501)])
def test_transfer_codings_must_end_in_one_chunked(server, coding, status):
    refused(server, request("/", [f"Transfer-Encoding: {coding}"], chunked(b"abc"), method="POST"), status)


def test_content_length_lines_must_agree(server):
    raw = request("/", ["Content-Length: 3", "Content-Length: 3"], b"abc", method="POST")
    assert echoed(responses(server, raw + COUNTER)[0])["body"] == b"abc"
    refused(server, request("/", ["Content-Length: 3", "Content-Length: 4"], b"abcd", method="POST"), 400)
    refused(server, request("/", ["Content-Length: +3"], b"abc", method="POST"), 400)


def test_no_length_and_no_coding_is_an_empty_body(server):
    raw = request("/a", method="POST") + request("/b")
    got = responses(server, raw + COUNTER)
    assert (echoed(got[0])["body"], echoed(got[1])["path"]) == (b"", "/b")


def test_a_body_cut_short_by_the_client_is_never_passed_on(server):
    resp = refused(server, request("/", ["Content-Length: 10"], b"abc", method="POST"), 400, eof=True)
    assert resp.header("connection") == "close"


# ---------------------------------------------------------------------------------------------
# Chunked coding and trailers (RFC 9112 section 7, RFC 9110 section 6.5)


@pytest.mark.parametrize("body", [b"3 \r\nabc\r\n0\r\n\r\n", b"3\r\nabc\r\n0\t\r\n\r\n", b"3  \r\nabc\r\n0\r\n\r\n"],
                         ids=["space-after-size", "tab-after-last-size", "two-spaces"])
def test_whitespace_after_a_chunk_size_is_refused(server, body):
    # Strict reading of the chunk grammar (section 7.1): whitespace may only come before an
    # extension's `;`.
    resp = refused(server, request("/", ["Transfer-Encoding: chunked"], body, method="POST"), 400)
    assert resp.header("connection") == "close"


def test_unknown_chunk_extensions_are_ignored(server):
    body = b"3;a=b\r\nabc\r\n2 ; c = \"d e\"\r\nde\r\n0;last\r\n\r\n"
    got = responses(server, request("/", ["Transfer-Encoding: chunked"], body, method="POST") + COUNTER)
    assert echoed(got[0])["body"] == b"abcde"
    assert len(got) == 2


def test_trailer_fields_are_not_merged_into_the_head(server):
    raw = request("/", ["Transfer-Encoding: chunked"], chunked(b"abc", trailer=b"X-Sum: 1\r\n"), method="POST")
    seen = echoed(responses(server, raw + COUNTER)[0])
    assert seen["body"] == b"abc" and "HTTP_X_SUM" not in seen["headers"]


@pytest.mark.parametrize("trailer", [b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n", b"Host: evil.example\r\n"])
def test_framing_and_routing_trailers_are_refused(server, trailer):
    refused(server, request("/", ["Transfer-Encoding: chunked"], chunked(b"abc", trailer=trailer), method="POST"), 400)


@pytest.mark.parametrize("end", [b"0\r\nX-A: 1\nHost: evil\r\n\r\n", b"0\r\n\n", b"0\r\nX-A: 1\r\n\n"],
                         ids=["inside-trailers", "ending-the-body", "ending-the-trailers"])
def test_bare_lf_in_a_trailer_is_refused(server, end):
    refused(server, request("/", ["Transfer-Encoding: chunked"], b"3\r\nabc\r\n" + end, method="POST"), 400)


# ---------------------------------------------------------------------------------------------
# Connections (RFC 9112 section 9)


def test_pipelined_responses_come_in_request_order(server):
    raw = (request("/1", ["Content-Length: 1"], b"a", method="POST") + request("/2")
           + request("/3", ["Transfer-Encoding: chunked"], chunked(b"c"), method="POST") + COUNTER)
    got = responses(server, raw)
    assert [echoed(r)["path"] for r in got[:3]] == ["/1", "/2", "/3"]


def test_nothing_after_a_connection_close_request_is_answered(server):
    before = calls(server)
    got = responses(server, request("/a", ["Connection: close"]) + request("/b"))
    assert [echoed(r)["path"] for r in got] == ["/a"]
    assert got[0].header("connection") == "close"
    assert calls(server) == before + 1


def test_a_response_that_says_close_closes(server):
    # The refusals say Connection: close and close: the following request is never read.
    before = calls(server)
    got = responses(server, request("/", host=False) + request("/after"))
    assert [r.status for r in got] == [400] and got[0].header("connection") == "close"
    assert calls(server) == before


def test_http10_responses_never_use_transfer_encoding(server):
    with RawConn.open(server) as conn:
        conn.send(request(respond(body="abc", stream=True), version="HTTP/1.0"))
        resp = conn.read_response()
    assert resp.header("transfer-encoding") is None and resp.framing == "close" and resp.body == b"abc"


# ---------------------------------------------------------------------------------------------
# Expect (RFC 9110 section 10.1.1)


def test_100_continue_on_http10_is_ignored(server):
    with RawConn.open(server) as conn:
        conn.send(request("/", ["Expect: 100-continue", "Content-Length: 3"], method="POST", version="HTTP/1.0"))
        with pytest.raises(socket.timeout):
            conn.peek(1, timeout=0.5)
        conn.send(b"abc")
        data = conn.read_to_close()
    # hyper answers an HTTP/1.0 request in HTTP/1.0.
    assert data.startswith(b"HTTP/1.0 200 OK\r\n") and b"100 Continue" not in data, data[:200]


def test_100_continue_then_a_final_status(server):
    with RawConn.open(server) as conn:
        conn.send(request("/", ["Expect: 100-continue", "Content-Length: 3"], method="POST"))
        assert conn.read_response().status == 100
        conn.send(b"abc")
        assert echoed(conn.read_response())["body"] == b"abc"


def test_unknown_expectation_is_417(server):
    refused(server, request("/", ["Expect: 101-switch"]), 417)


# ---------------------------------------------------------------------------------------------
# Responses (RFC 9110 sections 6.6.1, 9.3.2, 15; RFC 9112 section 6)

IMF_FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT")


@pytest.mark.parametrize(
    "raw",
    [
        request(respond()),
        request(respond("302 Found", ["Location:/x"])),
        request(respond("404 Not Found")),
        request("/", host=False),
        request("/", ["X: a\x00b"]),
    ],
    ids=["2xx", "3xx", "4xx-from-the-app", "4xx-from-coldbrew", "4xx-from-hyper"],
)
def test_date_in_every_2xx_3xx_4xx_response(server, raw):
    with RawConn.open(server) as conn:
        conn.send(raw)
        resp = conn.read_response()
    assert IMF_FIXDATE.fullmatch(resp.header("date") or ""), resp.raw_head


def test_head_response_has_no_content_and_keeps_the_length(server):
    resp = one_exchange(server, request(respond(body="abc", headers=["Content-Length:3"]), method="HEAD"), method="HEAD")
    assert resp.status == 200 and resp.header("content-length") == "3"
    resp = one_exchange(server, request(respond(body="abc", stream=True), method="HEAD"), method="HEAD")
    assert resp.status == 200


@pytest.mark.parametrize("stream", [False, True], ids=["list", "generator"])
def test_204_has_no_content_length_transfer_encoding_or_content(server, stream):
    resp = one_exchange(server, request(respond("204 No Content", ["Content-Length:3"], "abc", stream)))
    assert resp.status == 204
    assert resp.header("content-length") is None and resp.header("transfer-encoding") is None


def test_304_has_no_content(server):
    resp = one_exchange(server, request(respond("304 Not Modified", ["ETag:\"v\""], "abc")))
    assert resp.status == 304 and resp.header("transfer-encoding") is None
    assert resp.header("content-length") in (None, "3")


def test_an_apps_hop_by_hop_fields_are_not_sent(server):
    headers = ["Transfer-Encoding:gzip", "Upgrade:h2c", "Keep-Alive:timeout=5", "Connection:keep-alive", "TE:trailers"]
    resp = one_exchange(server, request(respond(headers=headers, body="abc")))
    names = {name for name, _ in resp.headers}
    assert not names & {"transfer-encoding", "upgrade", "keep-alive", "te"}, resp.raw_head
    assert resp.header("connection") is None and resp.body == b"abc"


def test_statuses_that_require_a_field_are_logged_without_it(serve):
    server = serve(APP)
    for status, field in [("401 Unauthorized", "WWW-Authenticate:Basic"), ("405 Method Not Allowed", "Allow:GET, HEAD"),
                          ("407 Proxy Authentication Required", "Proxy-Authenticate:Basic"),
                          ("426 Upgrade Required", "Upgrade:h2c")]:
        assert one_exchange(server, request(respond(status))).status == int(status[:3])
        resp = one_exchange(server, request(respond(status, [field])))
        name, _, value = field.partition(":")
        assert resp.header(name) == value, resp.raw_head
    server.stop()
    warnings = [line for line in server.stderr.splitlines() if "without a" in line]
    assert len(warnings) == 4, server.stderr
    for line, name in zip(warnings, ["www-authenticate", "allow", "proxy-authenticate", "upgrade"]):
        assert f"without a {name} header" in line, line


def test_426_keeps_the_apps_upgrade_and_lists_it_in_connection(server):
    resp = one_exchange(server, request(respond("426 Upgrade Required", ["Upgrade:TLS/1.2, HTTP/1.1"])))
    assert resp.header("upgrade") == "TLS/1.2, HTTP/1.1"
    assert "upgrade" in resp.header("connection").lower()
