"""PEP 3333: wsgi.file_wrapper.

A real file must arrive byte-exact from its current position, with a Content-Length, and the
file must be closed; a file-like object without fileno() falls back to plain iteration. Whether
the file was closed is read back via `/file-state?token=...` (with `--threads 1`, that request
runs only after the file response has completely finished on the only Python thread).
"""

import hashlib
import os
import sys
import uuid

import pytest
import requests

from conftest import APPS

sys.path.insert(0, str(APPS))
from pep3333_apps import deterministic_bytes  # noqa: E402
from pep3333_client import get_raw  # noqa: E402

APP = "pep3333_apps:app"
SIZE = 5 << 20


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("files") / "five-mib.bin"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    return path, data


@pytest.fixture
def server(serve):
    return serve(APP, "--threads", "1")


def file_state(server, tok):
    r = requests.get(server.url + "/file-state", params={"token": tok}, timeout=20)
    assert r.status_code == 200, r.text
    return r.json()["state"]


def fetch(server, route, **params):
    tok = uuid.uuid4().hex
    r = requests.get(server.url + route, params={"token": tok, **params}, timeout=60)
    return tok, r


def test_real_file_byte_exact_with_length_and_closed(server, data_file):
    path, data = data_file
    tok, r = fetch(server, "/file", path=str(path))
    assert r.status_code == 200, r.text[:500]
    assert r.headers.get("Content-Length") == str(SIZE)
    assert "Transfer-Encoding" not in r.headers
    assert len(r.content) == SIZE
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
    assert file_state(server, tok) == "closed"


@pytest.mark.parametrize("offset", [1, 4096, 1_234_567, SIZE - 1])
def test_real_file_after_seek_sends_the_rest(server, data_file, offset):
    path, data = data_file
    tok, r = fetch(server, "/file", path=str(path), seek=str(offset))
    assert r.status_code == 200, r.text[:500]
    assert r.headers.get("Content-Length") == str(SIZE - offset)
    assert r.content == data[offset:]
    assert file_state(server, tok) == "closed"


def test_real_file_after_partial_read_sends_the_rest(server, data_file):
    """f.read(100) makes Python's buffered reader read far ahead; only 100 bytes are consumed."""
    path, data = data_file
    tok, r = fetch(server, "/file", path=str(path), read="100")
    assert r.status_code == 200, r.text[:500]
    assert r.headers.get("Content-Length") == str(SIZE - 100)
    assert r.content == data[100:]
    assert file_state(server, tok) == "closed"


def test_real_file_at_end_sends_empty_body(server, data_file):
    path, data = data_file
    tok, r = fetch(server, "/file", path=str(path), seek=str(SIZE))
    assert r.status_code == 200, r.text[:500]
    assert r.headers.get("Content-Length") == "0"
    assert r.content == b""
    assert file_state(server, tok) == "closed"


def test_real_file_with_block_size(server, data_file):
    path, data = data_file
    tok, r = fetch(server, "/file", path=str(path), blksize="1000")
    assert r.status_code == 200, r.text[:500]
    assert r.content == data
    assert file_state(server, tok) == "closed"


def test_empty_real_file(server, tmp_path):
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    tok, r = fetch(server, "/file", path=str(path))
    assert r.status_code == 200, r.text[:500]
    assert r.headers.get("Content-Length") == "0"
    assert r.content == b""
    assert file_state(server, tok) == "closed"


def test_real_file_through_validator(server, data_file):
    """Wrapped by wsgiref.validate the server only sees an iterator: it must still work."""
    path, data = data_file
    tok, r = fetch(server, "/file-validated", path=str(path), seek="10")
    assert r.status_code == 200, r.text[:500]
    assert r.content == data[10:]
    assert file_state(server, tok) == "closed"


def test_real_file_head_request(server, data_file):
    path, data = data_file
    tok = uuid.uuid4().hex
    r = requests.head(server.url + "/file", params={"token": tok, "path": str(path)}, timeout=20)
    assert r.status_code == 200
    assert r.content == b""
    assert file_state(server, tok) == "closed"


def test_real_file_after_write(server, data_file):
    """write() output comes first, then the wrapped file (PEP 3333 allows write() followed by
    any iterable, and a file wrapper is one)."""
    path, data = data_file
    tok, r = fetch(server, "/file-after-write", path=str(path))
    assert r.status_code == 200, r.text[:500]
    assert len(r.content) == len(b"written-first;") + SIZE
    assert r.content == b"written-first;" + data
    assert file_state(server, tok) == "closed"


def test_real_file_limited_by_app_content_length(server, data_file):
    path, data = data_file
    with requests.Session() as s:
        r = s.get(server.url + "/file-with-length", params={"token": "cl", "path": str(path), "cl": "100"}, timeout=20)
        assert r.status_code == 200, r.text[:500]
        assert r.headers.get("Content-Length") == "100"
        assert r.content == data[:100]
        # The connection is still correctly framed for the next request.
        assert s.get(server.url + "/ok", timeout=20).content == b"ok"
    assert file_state(server, "cl") == "closed"


@pytest.mark.parametrize("size", [0, 1, 4096, 300_001])
def test_bytesio_falls_back_to_iteration(server, size):
    tok, r = fetch(server, "/bytesio", size=str(size))
    assert r.status_code == 200, r.text[:500]
    assert r.content == deterministic_bytes(size)
    assert file_state(server, tok) == "closed"


def test_file_responses_keep_connection_usable(server, data_file):
    """Two file responses and a normal one on one keep-alive connection stay delimited."""
    path, data = data_file
    with requests.Session() as s:
        a = s.get(server.url + "/file", params={"token": "ka1", "path": str(path), "seek": str(SIZE - 10)}, timeout=20)
        b = s.get(server.url + "/bytesio", params={"token": "ka2", "size": "5000"}, timeout=20)
        c = s.get(server.url + "/ok", timeout=20)
    assert a.content == data[-10:]
    assert b.content == deterministic_bytes(5000)
    assert c.content == b"ok"


def test_file_raw_framing(server, tmp_path):
    path = tmp_path / "small.txt"
    path.write_bytes(b"0123456789abcdef")
    resp = get_raw(server, f"/file?token=raw&path={path}&seek=6")
    assert resp.status == 200, resp.raw
    assert resp.header_all("Content-Length") == ["10"]
    assert resp.raw.endswith(b"\r\n\r\n6789abcdef")
