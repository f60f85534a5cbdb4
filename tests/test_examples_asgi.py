"""examples/fastapi_app.py, served exactly as its docstring says, by a real coldbrew process."""

import hashlib
import random

import pytest
import requests
from websockets.sync.client import connect as ws_connect

from conftest import EXAMPLES

TIMEOUT = 30


@pytest.fixture
def fastapi_server(serve):
    return serve("fastapi_app:app", cwd=EXAMPLES)


def test_the_startup_line_says_asgi_and_why(fastapi_server):
    assert requests.get(fastapi_server.url + "/", timeout=TIMEOUT).text == "Hello from FastAPI!\n"
    assert fastapi_server.stop() == 0
    assert "serving ASGI app fastapi_app:app (auto: its __call__ is a coroutine function)" in fastapi_server.stderr


def test_json_sees_the_resource_the_lifespan_opened(fastapi_server):
    response = requests.get(fastapi_server.url + "/json", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["framework"] == "fastapi" and body["nested"]["unicode"] == "caf\u00e9 \u2615"
    assert body["resource_open"] is True


def test_path_and_query_parameters(fastapi_server):
    response = requests.get(fastapi_server.url + "/items/42?q=caf%C3%A9&limit=3", timeout=TIMEOUT)
    assert response.json() == {"item_id": 42, "q": "caf\u00e9", "limit": 3}
    assert requests.get(fastapi_server.url + "/items/forty-two", timeout=TIMEOUT).status_code == 422


def test_a_pydantic_body_is_validated(fastapi_server):
    order = {"name": "beans", "quantity": 3, "price": 4.5, "tags": ["dark"]}
    response = requests.post(fastapi_server.url + "/orders", json=order, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"order": order, "total": 13.5}
    bad = requests.post(fastapi_server.url + "/orders", json={"name": "beans"}, timeout=TIMEOUT)
    assert bad.status_code == 422
    assert {error["loc"][-1] for error in bad.json()["detail"]} == {"quantity", "price"}


@pytest.mark.parametrize("size", [0, 1000, 5 * 1024 * 1024 + 7])
def test_upload_streams_to_the_app(fastapi_server, size):
    data = random.Random(size).randbytes(size)
    response = requests.post(fastapi_server.url + "/upload", data=data, timeout=TIMEOUT)
    assert response.json() == {"size": size, "sha256": hashlib.sha256(data).hexdigest()}


def test_a_streamed_response_arrives_whole(fastapi_server):
    response = requests.get(fastapi_server.url + "/stream?count=32", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers.get("transfer-encoding") == "chunked"
    assert len(response.content) == 32 * 64 * 1024
    assert response.content[:3] == b"AAA" and response.content[-3:] == bytes([65 + 31 % 26]) * 3


def test_server_sent_events_arrive_one_by_one(fastapi_server):
    with requests.get(fastapi_server.url + "/events?count=4", stream=True, timeout=TIMEOUT) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert lines == [item for i in range(4) for item in (f"id: {i}", f"data: tick {i}")]


def test_the_websocket_echoes(fastapi_server):
    with ws_connect(f"ws://127.0.0.1:{fastapi_server.port}/ws") as ws:
        for text in ("one", "caf\u00e9", "x" * 100_000):
            ws.send(text)
            assert ws.recv(timeout=TIMEOUT) == f"echo: {text}"
    # The app survived the client's close and goes on serving.
    assert requests.get(fastapi_server.url + "/", timeout=TIMEOUT).status_code == 200
