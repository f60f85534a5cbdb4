"""The example applications in examples/, served by a real coldbrew process.

hello.py is the README's first page; flask_app.py and django_app.py carry the same
routes, so every check below runs against both frameworks.
"""

import hashlib
import json
import random

import pytest
import requests

from conftest import EXAMPLES, recv_until_closed

TIMEOUT = 30

FRAMEWORKS = {
    "flask": ("flask_app:app", "Hello from Flask!\n"),
    "django": ("django_app:app", "Hello from Django!\n"),
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request):
    pytest.importorskip(request.param)
    return request.param


@pytest.fixture
def app_server(serve, framework):
    spec, _ = FRAMEWORKS[framework]
    return serve(spec, cwd=EXAMPLES)


def payload(size):
    """Deterministic, incompressible bytes."""
    return random.Random(size).randbytes(size)


def split_response(data):
    """Split raw bytes into (status code, lower-cased headers, rest)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def head_then_get(server, path="/"):
    """HEAD then GET on one keep-alive connection; returns (HEAD parts, GET parts).

    A server that wrongly sends a body after the HEAD response would leave those
    bytes in front of the GET response, so this catches a HEAD body that a client
    library would silently skip.
    """
    with server.connect() as sock:
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode())
        sock.settimeout(TIMEOUT)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the HEAD response ended"
            data += chunk
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n".encode()
        )
        data += recv_until_closed(sock)
    head_status, head_headers, rest = split_response(data)
    assert rest.startswith(b"HTTP/1.1 "), f"bytes after the HEAD response headers: {rest[:80]!r}"
    return (head_status, head_headers), split_response(rest)


# --- hello.py -------------------------------------------------------------------------


def test_hello(serve):
    server = serve("hello:app", cwd=EXAMPLES)
    r = requests.get(server.url + "/", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.content == b"Hello, World!"
    assert r.headers["Content-Length"] == "13"
    assert r.headers["Content-Type"].startswith("text/plain")


def test_hello_head_has_no_body(serve):
    server = serve("hello:app", cwd=EXAMPLES)
    (status, headers), (get_status, get_headers, body) = head_then_get(server)
    assert status == 200
    assert headers.get("content-length") == "13"
    assert get_status == 200
    assert body == b"Hello, World!"


# --- Flask and Django -------------------------------------------------------------------


def test_index(app_server, framework):
    r = requests.get(app_server.url + "/", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert r.text == FRAMEWORKS[framework][1]


def test_head_has_no_body(app_server, framework):
    (status, headers), (get_status, get_headers, body) = head_then_get(app_server)
    expected = FRAMEWORKS[framework][1].encode()
    assert status == 200
    assert get_status == 200
    assert body == expected
    # HEAD keeps the Content-Length the GET would have had.
    assert headers.get("content-length") == str(len(expected))


def test_json(app_server, framework):
    r = requests.get(app_server.url + "/json", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {
        "framework": framework,
        "message": "Hello, JSON!",
        "numbers": [1, 2, 3],
        "nested": {"ok": True, "unicode": "caf\u00e9 \u2615"},
    }


def test_form_post(app_server):
    fields = {"name": "Ada Lovelace", "lang": ["python", "rust"], "note": "a&b=c \u00fc+%"}
    r = requests.post(app_server.url + "/form", data=fields, timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json() == {
        "form": {"name": ["Ada Lovelace"], "lang": ["python", "rust"], "note": ["a&b=c \u00fc+%"]}
    }


def test_form_requires_post(app_server):
    r = requests.get(app_server.url + "/form", timeout=TIMEOUT)
    assert r.status_code == 405


# 200 KiB fits in the default --request-buffer (256 KiB) and is read before the app runs;
# 2 MiB does not, so the app reads it from the socket as it arrives.
@pytest.mark.parametrize("size", [200 * 1024, 2 * 1024 * 1024], ids=["200KiB", "2MiB"])
def test_upload(app_server, size):
    data = payload(size)
    r = requests.post(
        app_server.url + "/upload",
        files={"file": ("data.bin", data, "application/octet-stream")},
        data={"comment": "one file"},
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text[:500]
    assert r.json() == {
        "files": [
            {
                "field": "file",
                "filename": "data.bin",
                "size": size,
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        ],
        "form": {"comment": ["one file"]},
    }


def test_upload_two_files(app_server):
    small, large = payload(200 * 1024 + 7), payload(2 * 1024 * 1024 + 13)
    r = requests.post(
        app_server.url + "/upload",
        files=[
            ("small", ("small.bin", small, "application/octet-stream")),
            ("large", ("large.bin", large, "application/octet-stream")),
        ],
        timeout=TIMEOUT,
    )
    assert r.status_code == 200, r.text[:500]
    got = {f["field"]: f for f in r.json()["files"]}
    assert got == {
        "small": {
            "field": "small",
            "filename": "small.bin",
            "size": len(small),
            "sha256": hashlib.sha256(small).hexdigest(),
        },
        "large": {
            "field": "large",
            "filename": "large.bin",
            "size": len(large),
            "sha256": hashlib.sha256(large).hexdigest(),
        },
    }


def expected_stream(count, size):
    return b"".join(f"chunk {i:04d} ".encode() + b"x" * size + b"\n" for i in range(count))


# Small: the whole body fits in --response-buffer (1 MiB). Large: ~2.6 MiB, which has to
# stream through with backpressure.
@pytest.mark.parametrize(
    "count,size", [(5, 16), (40, 64 * 1024)], ids=["small", "larger-than-buffer"]
)
def test_stream(app_server, count, size):
    with requests.get(
        app_server.url + "/stream",
        params={"count": count, "size": size},
        stream=True,
        timeout=TIMEOUT,
    ) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        body = b"".join(r.iter_content(chunk_size=None))
    expected = expected_stream(count, size)
    lines = body.split(b"\n")
    assert lines[-1] == b"", "the last chunk is cut short"
    assert len(lines) - 1 == count
    assert body == expected


def test_item_path_and_query(app_server):
    r = requests.get(
        app_server.url + "/items/42",
        params=[("q", "cold brew"), ("tag", "a"), ("tag", "b"), ("empty", "")],
        timeout=TIMEOUT,
    )
    assert r.status_code == 200
    assert r.json() == {
        "item_id": 42,
        "query": {"q": ["cold brew"], "tag": ["a", "b"], "empty": [""]},
    }


def test_item_not_an_int(app_server):
    r = requests.get(app_server.url + "/items/forty-two", timeout=TIMEOUT)
    assert r.status_code == 404


def test_routes_on_one_connection(app_server, framework):
    """Keep-alive: one client session walks every route in turn."""
    data = payload(300 * 1024)
    with requests.Session() as s:
        for _ in range(2):
            assert s.get(app_server.url + "/", timeout=TIMEOUT).text == FRAMEWORKS[framework][1]
            assert s.get(app_server.url + "/json", timeout=TIMEOUT).json()["framework"] == framework
            r = s.post(app_server.url + "/form", data={"k": "v"}, timeout=TIMEOUT)
            assert r.json() == {"form": {"k": ["v"]}}
            r = s.post(app_server.url + "/upload", files={"f": ("f.bin", data)}, timeout=TIMEOUT)
            assert r.json()["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
            r = s.get(app_server.url + "/stream", params={"count": 3}, timeout=TIMEOUT)
            assert r.content == expected_stream(3, 16)
            r = s.get(app_server.url + "/items/7?x=1", timeout=TIMEOUT)
            assert json.loads(r.content) == {"item_id": 7, "query": {"x": ["1"]}}
