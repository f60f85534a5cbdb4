"""ASGI 3 over real sockets: scope, receive, send, errors, lifespan and real frameworks."""

import ast
import socket
import time

import pytest
import requests

from conftest import recv_until_closed


def get(server, path, **kwargs):
    return requests.get(server.url + path, timeout=10, **kwargs)


def test_the_scope_holds_what_the_spec_names(serve):
    server = serve("asgi_apps:app")
    response = requests.post(server.url + "/scope?a=%20b&c", data=b"payload", headers={"X-Dup": "1"}, timeout=10)
    assert response.status_code == 200
    scope = ast.literal_eval(response.text)
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "http"
    assert scope["path"] == "/scope"
    assert scope["raw_path"] == b"/scope"
    assert scope["query_string"] == b"a=%20b&c"
    assert scope["root_path"] == ""
    assert (b"x-dup", b"1") in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])
    assert scope["client_ip"] == "127.0.0.1"
    assert scope["server"] == ("127.0.0.1", server.port)
    assert scope["state"] == {"opened": "resource"}
    assert scope["body"] == b"payload" and scope["more_body"] is False


def test_percent_encoded_path_is_decoded_and_raw_path_kept(serve):
    server = serve("asgi_apps:app")
    with server.connect() as sock:
        sock.sendall(b"GET /sc%6Fpe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_until_closed(sock)
    scope = ast.literal_eval(data.split(b"\r\n\r\n", 1)[1].decode())
    assert scope["path"] == "/scope" and scope["raw_path"] == b"/sc%6Fpe"


def test_a_streamed_response_arrives_whole_and_in_order(serve):
    server = serve("asgi_apps:app")
    response = get(server, "/stream")
    assert response.status_code == 200
    assert len(response.content) == 64 * 65536 + 3
    assert response.content[:65536] == b"A" * 65536
    assert response.content.endswith(b"end")


def test_a_slow_reader_gets_the_whole_stream(serve):
    # The response is 4 MiB against a 64 KiB --response-buffer: send() must wait for the
    # client without blocking the loop, which meanwhile answers other requests.
    server = serve("asgi_apps:app", "--response-buffer", "64KiB")
    with server.connect() as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        first = sock.recv(1024)
        assert first.startswith(b"HTTP/1.1 200")
        assert get(server, "/scope").status_code == 200
        received = len(first)
        while chunk := sock.recv(65536):
            received += len(chunk)
            time.sleep(0.001)
    assert received > 64 * 65536


def test_an_app_that_raises_gets_500_and_a_traceback_and_the_server_goes_on(serve):
    server = serve("asgi_apps:app")
    response = get(server, "/raise")
    assert response.status_code == 500
    assert get(server, "/scope").status_code == 200
    server.stop()
    assert "error in ASGI app for GET /raise; answered 500" in server.stderr
    assert "ValueError: raised before the response" in server.stderr


def test_an_app_that_raises_mid_body_aborts_the_connection(serve):
    server = serve("asgi_apps:app")
    with server.connect() as sock:
        sock.sendall(b"GET /raise-mid-body HTTP/1.1\r\nHost: x\r\n\r\n")
        data = recv_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200")
    assert b"partial" in data
    assert not data.endswith(b"0\r\n\r\n"), "the chunked body must not look complete"
    server.stop()
    assert "during its response; connection aborted" in server.stderr


def test_an_app_that_sends_nothing_gets_500(serve):
    server = serve("asgi_apps:app")
    assert get(server, "/nothing").status_code == 500
    server.stop()
    assert "returned without sending a response" in server.stderr


def test_a_second_start_raises_in_the_app(serve):
    server = serve("asgi_apps:app")
    response = get(server, "/twice")
    assert response.status_code == 200
    assert response.text == "second start refused: http.response.start sent twice"


def test_after_the_response_receive_says_disconnect(serve):
    server = serve("asgi_apps:app")
    assert get(server, "/after-complete").text == "done"
    time.sleep(0.2)
    server.stop()
    assert "after complete: http.disconnect" in server.stdout


def test_a_client_that_leaves_is_told_http_disconnect(serve):
    server = serve("asgi_apps:app")
    sock = server.connect()
    sock.sendall(b"GET /wait-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.3)
    sock.close()
    deadline = time.monotonic() + 5
    server_alive = True
    while time.monotonic() < deadline and server_alive:
        time.sleep(0.1)
        server_alive = server.proc.poll() is None
        if get(server, "/scope").status_code != 200:
            break
        break
    time.sleep(0.5)
    server.stop()
    assert "wait-disconnect got http.disconnect" in server.stdout, server.stderr


def test_head_gets_no_body_and_204_drops_content_length(serve):
    server = serve("asgi_apps:app")
    response = requests.head(server.url + "/scope", timeout=10)
    assert response.status_code == 200 and response.content == b""
    response = get(server, "/sleep")
    assert response.status_code == 204
    assert "content-length" not in response.headers


def test_requests_run_concurrently_on_the_loop(serve):
    import concurrent.futures

    server = serve("asgi_apps:app")
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: get(server, "/sleep").status_code, range(8)))
    assert codes == [204] * 8
    # Eight half-second sleeps on one loop overlap; in series they would take 4 s.
    assert time.monotonic() - started < 3.5


def test_lifespan_shutdown_runs_on_sigterm(serve):
    server = serve("asgi_apps:app")
    assert get(server, "/scope").status_code == 200
    assert server.stop() == 0
    assert "lifespan shutdown ran" in server.stdout
    assert "shutdown complete" in server.stderr


def test_an_app_without_lifespan_support_is_served_with_one_info_line(serve):
    server = serve("asgi_apps:no_lifespan")
    assert get(server, "/").text == "ok"
    server.stop()
    assert "does not support the ASGI lifespan protocol (RuntimeError: only http here)" in server.stderr


def test_lifespan_on_makes_an_unsupported_lifespan_a_startup_failure(serve):
    server = serve("asgi_apps:no_lifespan", "--lifespan", "on", ready=False)
    assert server.proc.wait(timeout=30) == 3
    server.stop()
    assert "lifespan startup raised" in server.stderr


def test_lifespan_off_skips_it(serve):
    server = serve("asgi_apps:no_lifespan", "--lifespan", "off")
    assert get(server, "/").text == "ok"
    server.stop()
    assert "lifespan protocol" not in server.stderr and "lifespan scope" not in server.stderr


def test_a_failed_startup_stops_the_server_with_status_3_before_the_port_opens(serve):
    server = serve("asgi_apps:failing_startup", ready=False)
    assert server.proc.wait(timeout=30) == 3
    server.stop()
    assert "lifespan startup failed: database unreachable" in server.stderr
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_both_loops_serve(serve, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    server = serve("asgi_apps:app", "--loop", loop, "--log-level", "debug")
    assert get(server, "/scope").status_code == 200
    server.stop()
    assert f"event loop: {loop}" in server.stderr


def test_interface_wsgi_forces_wsgi(serve):
    server = serve("http_apps:app", "--interface", "wsgi")
    server.stop()
    assert "serving WSGI app http_apps:app (--interface wsgi)" in server.stderr


def test_fastapi(serve):
    pytest.importorskip("fastapi")
    server = serve("asgi_fastapi:app")
    assert get(server, "/items/7?q=x").json() == {"item_id": 7, "q": "x"}
    assert get(server, "/items/nope").status_code == 422
    response = requests.post(server.url + "/items", json={"name": "tea", "price": 1.5}, timeout=10)
    assert response.json() == {"name": "tea", "total": 3.0}
    assert requests.post(server.url + "/items", json={"name": "tea"}, timeout=10).status_code == 422
    assert get(server, "/state").json() == {"pool": "open"}
    events = get(server, "/events")
    assert events.headers["content-type"].startswith("text/event-stream")
    assert events.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert get(server, "/missing").status_code == 404


def test_starlette(serve):
    pytest.importorskip("starlette")
    server = serve("asgi_starlette:app")
    assert get(server, "/hello/world?q=1").json() == {"hello": "world", "q": "1"}
    assert requests.post(server.url + "/echo", data=b"abc" * 50000, timeout=10).text == "cba" * 50000


def test_django_asgi(serve):
    server = serve("asgi_django:application")
    assert get(server, "/items/3?q=z").json() == {"item_id": 3, "async": True, "q": "z"}
    assert get(server, "/sync").json() == {"sync": True}
    assert get(server, "/missing").status_code == 404
