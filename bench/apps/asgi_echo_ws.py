"""asgi_echo_ws: a raw ASGI 3 websocket echo app, the testee for scripts/autobahn.sh.

Every websocket is accepted; each text message comes back as text and each binary
message as bytes, unchanged, until websocket.disconnect. Lifespan is supported (and does
nothing); a plain HTTP request gets a short 200 so a probe can tell the server is up.
"""


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "websocket":
        await websocket(receive, send)
    elif kind == "http":
        await http(receive, send)
    elif kind == "lifespan":
        await lifespan(receive, send)


async def websocket(receive, send):
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message["type"] != "websocket.receive":
            continue
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def http(receive, send):
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    body = b"asgi_echo_ws: connect with a websocket\n"
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
