"""PEP 3333: the environ dict the server hands the app.

Every test starts a real coldbrew process (tests/apps/pep3333_apps.py) and makes real HTTP
requests; raw sockets are used wherever exact request bytes matter.
"""

import json
import sys
import uuid

import pytest
import requests

from conftest import APPS

sys.path.insert(0, str(APPS))
from pep3333_client import RawResponse, get_raw, http_get, raw_request, recv_all  # noqa: E402

ECHO = "pep3333_apps:echo_environ"


def echo(server, target="/", **kwargs):
    status, headers, body = http_get(server, target, **kwargs)
    assert status == 200, body
    return json.loads(body)


def echo_raw(server, target="/", extra=b"", version=b"HTTP/1.1", host=None):
    resp = get_raw(server, target, extra=extra, version=version, host=host)
    assert resp.status == 200, resp.raw
    return resp.json()


@pytest.fixture
def echo_server(serve):
    return serve(ECHO, "--threads", "4")


# ---------------------------------------------------------------------------------------------
# the validator's view


def test_validator_accepts_environ(serve):
    server = serve("pep3333_apps:echo_environ_validated")
    r = requests.get(server.url + "/some/path?x=1", headers={"X-Thing": "v"}, timeout=10)
    assert r.status_code == 200, r.text
    r = requests.post(server.url + "/p", data=b"body", headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------
# REQUEST_METHOD


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
def test_request_method(echo_server, method):
    data = echo(echo_server, "/", method=method, body=b"" if method in ("POST", "PUT", "PATCH") else None)
    assert data["environ"]["REQUEST_METHOD"] == method


def test_request_method_head(echo_server):
    status, headers, body = http_get(echo_server, "/", method="HEAD")
    assert status == 200
    assert headers["X-Request-Method"] == "HEAD"
    assert body == b""


# ---------------------------------------------------------------------------------------------
# SCRIPT_NAME / PATH_INFO


def test_script_name_empty_by_default(echo_server):
    env = echo(echo_server, "/users/1")["environ"]
    assert env.get("SCRIPT_NAME", "") == ""
    assert env["PATH_INFO"] == "/users/1"


@pytest.mark.parametrize("how", ["option", "env"])
@pytest.mark.parametrize(
    "target, path_info",
    [("/api/users/1", "/users/1"), ("/api/", "/"), ("/api", "")],
)
def test_script_name_from_root_path(serve, how, target, path_info):
    if how == "option":
        server = serve(ECHO, "--root-path", "/api")
    else:
        server = serve(ECHO, env={"SCRIPT_NAME": "/api"})
    env = echo(server, target)["environ"]
    assert env["SCRIPT_NAME"] == "/api"
    assert env.get("PATH_INFO", "") == path_info


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/plain/path", "/plain/path"),
        ("/caf%C3%A9", b"/caf\xc3\xa9".decode("latin-1")),
        ("/a%2Fb", "/a/b"),
        ("/sp%20ace", "/sp ace"),
        ("/pct%25literal", "/pct%literal"),
        ("/%e9t%E9", b"/\xe9t\xe9".decode("latin-1")),
    ],
)
def test_path_info_percent_decoded_latin1(echo_server, target, expected):
    data = echo_raw(echo_server, target)
    assert data["environ"]["PATH_INFO"] == expected
    assert data["types"]["PATH_INFO"] == "str"


# ---------------------------------------------------------------------------------------------
# QUERY_STRING


@pytest.mark.parametrize(
    "target, expected",
    [
        ("/q?a=%20b&c", "a=%20b&c"),
        ("/q?x=%2F%26y+z&empty=", "x=%2F%26y+z&empty="),
        ("/q?caf%C3%A9=1", "caf%C3%A9=1"),
        ("/q", ""),
    ],
)
def test_query_string_raw(echo_server, target, expected):
    env = echo_raw(echo_server, target)["environ"]
    assert env.get("QUERY_STRING", "") == expected
    # The query is never part of PATH_INFO.
    assert env["PATH_INFO"] == "/q"


# ---------------------------------------------------------------------------------------------
# CONTENT_TYPE / CONTENT_LENGTH


def test_content_headers_absent_without_body(echo_server):
    env = echo(echo_server, "/")["environ"]
    assert env.get("CONTENT_TYPE", "") == ""
    assert env.get("CONTENT_LENGTH", "") == ""
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env


def test_content_headers_when_sent(echo_server):
    env = echo(
        echo_server,
        "/",
        method="POST",
        body=b"0123456789",
        headers={"Content-Type": "application/x-test; charset=latin-1"},
    )["environ"]
    assert env["CONTENT_TYPE"] == "application/x-test; charset=latin-1"
    assert env["CONTENT_LENGTH"] == "10"
    assert "HTTP_CONTENT_TYPE" not in env
    assert "HTTP_CONTENT_LENGTH" not in env


def test_no_content_length_for_chunked_request(echo_server):
    r = requests.post(echo_server.url + "/", data=(b"abc" for _ in range(3)), timeout=10)
    assert r.status_code == 200, r.text
    env = r.json()["environ"]
    assert env.get("CONTENT_LENGTH", "") == ""
    assert "HTTP_CONTENT_LENGTH" not in env


def test_content_type_without_body(echo_server):
    env = echo_raw(echo_server, "/", extra=b"Content-Type: text/x-only\r\n")["environ"]
    assert env["CONTENT_TYPE"] == "text/x-only"
    assert "HTTP_CONTENT_TYPE" not in env


# ---------------------------------------------------------------------------------------------
# SERVER_NAME / SERVER_PORT / SERVER_PROTOCOL


def test_server_name_and_port_from_host(echo_server):
    env = echo_raw(echo_server, "/", host=b"example.com:8080")["environ"]
    assert env["SERVER_NAME"] == "example.com"
    assert env["SERVER_PORT"] == "8080"
    assert env["HTTP_HOST"] == "example.com:8080"


def test_server_name_from_host_without_port(echo_server):
    env = echo_raw(echo_server, "/", host=b"example.org")["environ"]
    assert env["SERVER_NAME"] == "example.org"
    assert env["SERVER_PORT"].isdigit()


def test_server_name_and_port_default(echo_server):
    env = echo(echo_server, "/")["environ"]
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(echo_server.port)


def test_server_name_without_host_header_http10(echo_server):
    resp = raw_request(echo_server, b"GET / HTTP/1.0\r\n\r\n")
    assert resp.status == 200, resp.raw
    env = resp.json()["environ"]
    assert env["SERVER_NAME"] != ""
    assert env["SERVER_PORT"] == str(echo_server.port)


@pytest.mark.parametrize("version", [b"HTTP/1.0", b"HTTP/1.1"])
def test_server_protocol(echo_server, version):
    env = echo_raw(echo_server, "/", version=version)["environ"]
    assert env["SERVER_PROTOCOL"] == version.decode()


# ---------------------------------------------------------------------------------------------
# REMOTE_ADDR / REMOTE_PORT


def test_remote_addr_and_port(echo_server):
    with echo_server.connect() as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        resp = RawResponse(recv_all(sock))
    env = resp.json()["environ"]
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(local_port)


# ---------------------------------------------------------------------------------------------
# HTTP_* variables


def test_http_headers(echo_server):
    env = echo(
        echo_server,
        "/",
        headers={"X-Custom-Header": "custom value", "User-Agent": "pep3333-test/1", "Accept": "text/x-thing"},
    )["environ"]
    assert env["HTTP_X_CUSTOM_HEADER"] == "custom value"
    assert env["HTTP_USER_AGENT"] == "pep3333-test/1"
    assert env["HTTP_ACCEPT"] == "text/x-thing"
    assert env["HTTP_HOST"] == f"127.0.0.1:{echo_server.port}"


def test_all_cgi_values_are_native_str(echo_server):
    data = echo_raw(
        echo_server,
        "/p%C3%A9?q=1",
        extra=b"X-One: 1\r\nX-Bin: \xe9\r\nContent-Type: a/b\r\nContent-Length: 0\r\n",
    )
    non_str = {k: t for k, t in data["types"].items() if "." not in k and t != "str"}
    assert non_str == {}
    assert data["types"]["wsgi.url_scheme"] == "str"


def test_header_bytes_survive_as_latin1(echo_server):
    env = echo_raw(echo_server, "/", extra=b"X-Bin: caf\xe9\xff\r\n")["environ"]
    assert env["HTTP_X_BIN"] == "caf\xe9\xff"


def test_repeated_headers_joined_with_comma(echo_server):
    env = echo_raw(echo_server, "/", extra=b"X-Multi: a\r\nX-Other: o\r\nX-Multi: b\r\nX-Multi: c\r\n")["environ"]
    assert env["HTTP_X_MULTI"] == "a, b, c"
    assert env["HTTP_X_OTHER"] == "o"


def test_repeated_cookie_joined_with_semicolon(echo_server):
    env = echo_raw(echo_server, "/", extra=b"Cookie: a=1\r\nCookie: b=2\r\n")["environ"]
    assert env["HTTP_COOKIE"] == "a=1; b=2"


@pytest.mark.parametrize(
    "extra",
    [b"X_Auth: evil\r\nX-Auth: good\r\n", b"X-Auth: good\r\nX_Auth: evil\r\n"],
    ids=["underscore-first", "dash-first"],
)
def test_header_with_underscore_dropped(echo_server, extra):
    env = echo_raw(echo_server, "/", extra=extra)["environ"]
    assert env["HTTP_X_AUTH"] == "good"


def test_header_with_underscore_only_is_dropped(echo_server):
    env = echo_raw(echo_server, "/", extra=b"X_Auth: evil\r\n")["environ"]
    assert "HTTP_X_AUTH" not in env
    assert not any("evil" in v for v in env.values())


# ---------------------------------------------------------------------------------------------
# wsgi.* variables


def test_wsgi_variables(echo_server):
    data = echo(echo_server, "/")
    assert data["repr"]["wsgi.version"] == "(1, 0)"
    assert data["checks"]["version_is_tuple"] is True
    assert data["environ"]["wsgi.url_scheme"] == "http"
    assert "wsgi.input" in data["types"]
    assert data["checks"]["input_methods"] is True
    assert "wsgi.errors" in data["types"]
    assert data["checks"]["errors_methods"] is True
    assert data["checks"]["wsgi.multiprocess"] is False
    assert data["checks"]["wsgi.run_once"] is False
    assert data["checks"]["file_wrapper_callable"] is True
    assert data["checks"]["wsgi.input_terminated"] is True
    assert data["checks"]["environ_is_dict"] is True


@pytest.mark.parametrize("threads, expected", [("4", True), ("1", False)])
def test_wsgi_multithread(serve, threads, expected):
    server = serve(ECHO, "--threads", threads)
    assert echo(server, "/")["checks"]["wsgi.multithread"] is expected


def test_wsgi_errors_goes_to_server_stderr(serve):
    server = serve("pep3333_apps:app")
    marker = "pep3333-errors-" + uuid.uuid4().hex
    r = requests.get(server.url + "/errors", params={"marker": marker, "marker2": marker + "-lines"}, timeout=10)
    assert r.status_code == 200, r.text
    server.stop()
    assert marker + "\n" in server.stderr
    assert marker + "-lines\n" in server.stderr


def test_environ_is_fresh_per_request(echo_server):
    """A header sent on one request must not leak into the next one on the same connection."""
    with requests.Session() as s:
        first = s.get(echo_server.url + "/", headers={"X-Only-First": "1"}, timeout=10).json()["environ"]
        second = s.get(echo_server.url + "/second?b=2", timeout=10).json()["environ"]
    assert first["HTTP_X_ONLY_FIRST"] == "1"
    assert "HTTP_X_ONLY_FIRST" not in second
    assert second["PATH_INFO"] == "/second"
    assert second["QUERY_STRING"] == "b=2"
