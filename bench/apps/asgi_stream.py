"""asgi_stream: a raw ASGI 3 app streaming a 1 MiB response as 16 body messages of 64 KiB
(more_body true on all but the last) with no Content-Length, so the server sends it with
chunked transfer encoding, as it would a generated file or a StreamingResponse."""

CHUNK = b"s" * (64 * 1024)
CHUNKS = 16
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/octet-stream")],
}
MORE = {"type": "http.response.body", "body": CHUNK, "more_body": True}
LAST = {"type": "http.response.body", "body": CHUNK, "more_body": False}


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    await send(START)
    for _ in range(CHUNKS - 1):
        await send(MORE)
    await send(LAST)
