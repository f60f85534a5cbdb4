"""ASGI in operation: --timeout, --loop-block-warning, traces in the JSON log, the staged stop."""

import json
import socket
import threading
import time

import pytest
import requests
from websockets.sync.client import connect as ws_connect

from conftest import recv_until_closed

TRACE_A = "0af7651916cd43dd8448eb211c80319c"
TRACE_B = "4bf92f3577b34da6a3ce929d0e0e4736"


def traceparent(trace):
    return f"00-{trace}-b7ad6b7169203331-01"


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_timeout_answers_504_logs_the_await_chain_and_cancels_the_task(serve):
    server = serve("asgi_ops_apps:app", "--timeout", "1")
    response = requests.get(server.url + "/upstream", timeout=10)
    assert response.status_code == 504
    # The server goes on serving, the cancelled task did not take the loop with it.
    assert requests.get(server.url + "/fast", timeout=10).text == "done"
    assert server.stop() == 0
    log = server.stderr
    assert "GET /upstream: no response within 1 s (--timeout); answered 504 and cancelled the task" in log
    # The stack names every coroutine of the chain down to where it waits.
    assert "in app" in log and "in wait_upstream" in log and "await asyncio.sleep(60)" in log
    # The cancellation is not reported again as an error in the app.
    assert "CancelledError" not in log


def test_a_blocked_loop_is_reported_once_with_its_stack(serve):
    server = serve("asgi_ops_apps:app", "--loop-block-warning", "0.3")
    # An idle wait first: a request that awaits is not a blocked loop.
    assert requests.get(server.url + "/slow", timeout=10).text == "done"
    assert requests.get(server.url + "/block", timeout=10).text == "done"
    assert server.stop() == 0
    warnings = [line for line in server.stderr.splitlines() if "the event loop has not run for" in line]
    assert len(warnings) == 1, server.stderr
    assert "(--loop-block-warning 0.3)" in warnings[0]
    assert "time.sleep(1.5)" in server.stderr


def test_no_block_warning_when_turned_off(serve):
    server = serve("asgi_ops_apps:app", "--loop-block-warning", "0")
    assert requests.get(server.url + "/block", timeout=10).text == "done"
    assert server.stop() == 0
    assert "the event loop has not run" not in server.stderr


def test_each_task_logs_with_its_own_requests_trace(serve):
    server = serve("asgi_ops_apps:app", "--log-format", "json", env={"GOOGLE_CLOUD_PROJECT": "proj"})
    results = {}

    def fetch(tag, trace):
        results[tag] = requests.get(server.url + f"/log?{tag}", headers={"traceparent": traceparent(trace)}, timeout=10)

    threads = [threading.Thread(target=fetch, args=("a", TRACE_A)), threading.Thread(target=fetch, args=("b", TRACE_B))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(response.status_code == 200 for response in results.values())
    untraced = requests.get(server.url + "/log?none", timeout=10)
    assert untraced.status_code == 200
    assert server.stop() == 0
    records = [r for r in json_lines(server.stderr) if r.get("logger") == "opsapp"]
    by_tag = {}
    for record in records:
        tag = record["message"].rsplit(" ", 1)[1]
        by_tag.setdefault(tag, []).append(record.get("logging.googleapis.com/trace"))
    assert by_tag["a"] == [f"projects/proj/traces/{TRACE_A}"] * 2
    assert by_tag["b"] == [f"projects/proj/traces/{TRACE_B}"] * 2
    assert by_tag["none"] == [None, None]


def test_the_servers_own_lines_about_a_request_carry_its_trace(serve):
    server = serve("asgi_ops_apps:app", "--log-format", "json", "--timeout", "0.5", env={"GOOGLE_CLOUD_PROJECT": "proj"})
    response = requests.get(server.url + "/upstream", headers={"traceparent": traceparent(TRACE_A)}, timeout=10)
    assert response.status_code == 504
    assert server.stop() == 0
    [line] = [r for r in json_lines(server.stderr) if "(--timeout)" in r["message"]]
    assert line["severity"] == "ERROR"
    assert line["logging.googleapis.com/trace"] == f"projects/proj/traces/{TRACE_A}"


def read_until(sock, marker, timeout=10.0):
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_sigterm_ends_streams_and_websockets_at_half_budget_then_runs_the_lifespan_shutdown(serve, tmp_path):
    """The issue's proof: an SSE stream, a websocket and a slow request open at once, and with
    the default --graceful-timeout the whole stop, lifespan shutdown included, fits inside
    Cloud Run's 10 seconds."""
    marker = tmp_path / "shutdown"
    server = serve("asgi_ops_apps:app", env={"SHUTDOWN_MARKER": str(marker)})

    events = server.connect()
    events.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    head = read_until(events, b"data: hello")
    assert b"200 OK" in head and b"data: hello" in head

    with ws_connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        stop_with_everything_open(server, events, ws, marker)


def stop_with_everything_open(server, events, ws, marker):
    slow = {}
    slow_thread = threading.Thread(target=lambda: slow.update(r=requests.get(server.url + "/slow", timeout=20)))
    slow_thread.start()
    time.sleep(0.3)  # the slow request has reached the app

    stopped_at = time.monotonic()
    server.proc.send_signal(15)

    # The websocket is closed by the server with 1001, going away.
    with pytest.raises(Exception) as closed:
        ws.recv(timeout=9)
    assert ws.close_code == 1001, closed.value

    # The event stream's body ends cleanly: the chunked terminator, then the connection closes.
    rest = recv_until_closed(events, timeout=9)
    assert rest.endswith(b"0\r\n\r\n"), rest

    slow_thread.join(timeout=10)
    assert slow["r"].status_code == 200 and slow["r"].text == "done"

    code = server.proc.wait(timeout=9.5 - (time.monotonic() - stopped_at))
    assert code == 0
    assert marker.exists(), "the lifespan shutdown did not run"
    server.stop()
    assert "event stream told http.disconnect" in server.stdout
    assert "websocket disconnect 1001" in server.stdout


def scrape(port):
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_websockets_are_counted_in_the_metrics(serve):
    from conftest import free_port

    metrics_port = free_port()
    server = serve("asgi_ops_apps:app", "--metrics-bind", f"127.0.0.1:{metrics_port}")
    with ws_connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
        for text in ("a", "b", "c"):
            ws.send(text)
            assert ws.recv(timeout=10) == text
        values = scrape(metrics_port)
        assert values["coldbrew_websockets_open"] == 1
        assert values["coldbrew_websockets_total"] == 1
        assert values['coldbrew_websocket_messages_total{direction="received"}'] == 3
        assert values['coldbrew_websocket_messages_total{direction="sent"}'] == 3
    deadline = time.monotonic() + 10
    while scrape(metrics_port)["coldbrew_websockets_open"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    values = scrape(metrics_port)
    assert values["coldbrew_websockets_open"] == 0 and values["coldbrew_websockets_total"] == 1


def raw_get(server, path, extra=b""):
    with server.connect() as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n")
        return recv_until_closed(sock)


def test_pathsend_sends_the_file_from_rust(serve, tmp_path):
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    server = serve("asgi_ops_apps:app", env={"PATHSEND_FILE": str(path)})
    assert "'http.response.pathsend'" in requests.get(server.url + "/extensions", timeout=10).text
    response = requests.get(server.url + "/pathsend", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(data))
    assert response.content == data
    head = requests.head(server.url + "/pathsend", timeout=10)
    assert head.status_code == 200 and head.content == b""
    missing = requests.get(server.url + "/pathsend-missing", timeout=10)
    assert missing.status_code == 200
    assert missing.text.startswith("OSError: http.response.pathsend cannot open /nonexistent/file")


def test_trailers_are_advertised_and_sent_only_to_a_client_that_takes_them(serve):
    server = serve("asgi_ops_apps:app")
    assert "http.response.trailers" not in requests.get(server.url + "/extensions", timeout=10).text
    advertised = raw_get(server, "/extensions", b"TE: trailers\r\n")
    assert b"'http.response.trailers'" in advertised

    answer = raw_get(server, "/trailers", b"TE: trailers\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head or b"transfer-encoding: chunked" in head
    # The body in chunks, then the trailer fields after the last chunk.
    assert b"part one, " in body and b"part two" in body
    tail = body[body.index(b"\r\n0\r\n") + len(b"\r\n0\r\n"):].lower()
    assert b"x-checksum: abc123\r\n" in tail and b"x-count: 2\r\n" in tail and tail.endswith(b"\r\n\r\n")

    # Without TE: trailers the body is the same and no trailer field goes out.
    plain = raw_get(server, "/trailers")
    assert b"part two" in plain and b"abc123" not in plain


def test_an_async_warmup_is_awaited_on_the_workers_event_loop(serve):
    for workers in ("1", "2"):
        server = serve("asgi_ops_apps:app", "--workers", workers, "--warmup", "asgi_ops_apps:warm_on_the_loop")
        assert requests.get(server.url + "/warmed", timeout=10).text == "same loop"
        assert server.stop() == 0
        assert "async warm-up (1 function(s))" in server.stderr


def test_a_failing_async_warmup_stops_the_server_with_status_3(serve):
    server = serve("asgi_ops_apps:app", "--warmup", "asgi_ops_apps:warm_and_fail", ready=False)
    assert server.proc.wait(timeout=30) == 3
    server.stop()
    assert "--warmup asgi_ops_apps:warm_and_fail raised RuntimeError: the database is unreachable" in server.stderr


def test_requests_run_in_named_tasks_or_in_the_apps_task_factory(serve):
    # Without a task factory coldbrew makes the task itself, with a fixed name.
    server = serve("asgi_ops_apps:factory_app")
    assert requests.get(server.url + "/", timeout=10).text == "coldbrew request False"
    assert server.stop() == 0
    # A factory the app installs in its lifespan startup makes every request's task.
    server = serve("asgi_ops_apps:factory_app", env={"ASGI_TASK_FACTORY": "1"})
    assert requests.get(server.url + "/", timeout=10).text.endswith(" True")
    assert server.stop() == 0
