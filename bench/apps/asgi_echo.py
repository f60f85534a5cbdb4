"""asgi_echo: a raw ASGI 3 app that reads the whole request body (every http.request
message until more_body is false) and sends it back with a Content-Length."""

HEADERS_TYPE = (b"content-type", b"application/octet-stream")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the client left
            return
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    await send({
        "type": "http.response.start",
        "status": 200,
        "headers": [HEADERS_TYPE, (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
