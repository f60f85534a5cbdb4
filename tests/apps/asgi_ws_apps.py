"""Raw ASGI 3 websocket apps for tests/test_asgi_websocket.py, no framework.

What the app sees that a client cannot (the disconnect it is told, how far a flood got, that the
lifespan shutdown ran) is written as JSON files into the directory named by $WS_RECORD_DIR,
so a test can read it while the server runs and after it has exited.
"""

import asyncio
import json
import os
from urllib.parse import parse_qs


def record(name, value):
    directory = os.environ.get("WS_RECORD_DIR")
    if not directory:
        return
    path = os.path.join(directory, f"{name}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def query(scope):
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            record("lifespan-shutdown", {"ran": True})
            await send({"type": "lifespan.shutdown.complete"})
            return


# /hold's websocket reads nothing until an HTTP GET /release sets this (same loop).
released = None


async def http(scope, receive, send):
    await receive()
    if scope["path"] == "/release":
        released.set()
    body = f"plain http on {scope['path']}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def echo_until_disconnect(receive, send, name):
    """Echoes every message as it came (text as text, bytes as bytes); records the disconnect."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            record(name, {"code": message["code"], "reason": message.get("reason")})
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await lifespan(receive, send)
    if scope["type"] == "http":
        return await http(scope, receive, send)
    assert scope["type"] == "websocket", scope["type"]
    path = scope["path"]
    args = query(scope)
    name = args.get("rec", "disconnect")

    if path == "/scope":
        first = await receive()
        await send({"type": "websocket.accept"})
        described = {key: value for key, value in scope.items() if key != "state"}
        described["has_method"] = "method" in scope
        described["first"] = first
        await send({"type": "websocket.send", "text": repr(described)})
        await echo_until_disconnect(receive, send, name)

    elif path == "/echo":
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await echo_until_disconnect(receive, send, name)

    elif path == "/subprotocol":
        await receive()
        offered = scope["subprotocols"]
        await send({
            "type": "websocket.accept",
            "subprotocol": offered[-1] if offered else None,
            "headers": [(b"x-accepted-by", b"asgi_ws_apps"), (b"set-cookie", b"session=abc")],
        })
        await send({"type": "websocket.send", "text": f"offered {offered}"})
        await echo_until_disconnect(receive, send, name)

    elif path == "/close-4000":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "closing"})
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
        # After its own close the app is told the connection has ended.
        message = await receive()
        record(name, {"code": message.get("code"), "type": message["type"]})

    elif path == "/deny-close":
        await receive()
        await send({"type": "websocket.close"})
        message = await receive()
        record(name, {"type": message["type"]})

    elif path == "/deny-return":
        await receive()
        return

    elif path == "/raise-before":
        await receive()
        raise RuntimeError("raised before accept")

    elif path == "/raise-after":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "accepted"})
        await receive()
        raise ValueError("raised after accept")

    elif path == "/http-response":
        await receive()
        await send({
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [(b"www-authenticate", b'Bearer realm="ws"'), (b"x-denied", b"yes"), (b"content-type", b"text/plain")],
        })
        await send({"type": "websocket.http.response.body", "body": b"no token, ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"no websocket"})

    elif path == "/flood":
        # 1024 messages of 64 KiB to a client that does not read: send() must hold the app back.
        await receive()
        await send({"type": "websocket.accept"})
        count = int(args.get("count", "1024"))
        size = int(args.get("size", "65536"))
        for i in range(count):
            await send({"type": "websocket.send", "bytes": bytes([i % 256]) * size})
            record("flood", {"sent": i + 1})
        await echo_until_disconnect(receive, send, name)

    elif path == "/hold":
        # Reads nothing until released, then counts what came.
        global released
        released = asyncio.Event()
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "holding"})
        await released.wait()
        count = total = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                record(name, {"count": count, "bytes": total, "code": message["code"]})
                return
            count += 1
            total += len(message.get("bytes") or b"")

    else:
        await receive()
        await send({"type": "websocket.close", "code": 1000})
