"""ASGI apps for tests/test_asgi.py: raw ASGI 3, no framework."""

import asyncio

events = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                scope["state"]["opened"] = "resource"
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                print("lifespan shutdown ran", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/scope":
        message = await receive()
        body = repr({
            "type": scope["type"], "asgi": scope["asgi"], "http_version": scope["http_version"],
            "method": scope["method"], "scheme": scope["scheme"], "path": scope["path"],
            "raw_path": scope["raw_path"], "query_string": scope["query_string"],
            "root_path": scope["root_path"], "headers": scope["headers"],
            "client_ip": scope["client"][0], "server": scope["server"], "state": scope["state"],
            "body": message["body"], "more_body": message["more_body"],
        }).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"x-Mixed", b"1")]})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(64):
            await send({"type": "http.response.body", "body": bytes([65 + i % 26]) * 65536, "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})
    elif path == "/raise":
        raise ValueError("raised before the response")
    elif path == "/raise-mid-body":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise ValueError("raised mid-body")
    elif path == "/nothing":
        return
    elif path == "/twice":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        except RuntimeError as exc:
            text = f"second start refused: {exc}".encode()
        await send({"type": "http.response.body", "body": text})
    elif path == "/after-complete":
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        try:
            await send({"type": "http.response.body", "body": b"more"})
        except RuntimeError:
            pass
        message = await receive()
        print(f"after complete: {message['type']}", flush=True)
    elif path == "/wait-disconnect":
        message = await receive()
        message = await receive()
        print(f"wait-disconnect got {message['type']}", flush=True)
    elif path == "/sleep":
        await asyncio.sleep(0.5)
        await send({"type": "http.response.start", "status": 204, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})


async def no_lifespan(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError("only http here")
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def failing_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
