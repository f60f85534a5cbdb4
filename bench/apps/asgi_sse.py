"""asgi_sse: server-sent events from a raw ASGI 3 app.

GET /sse?interval=SECONDS&seconds=SECONDS holds a text/event-stream open and sends one
event per body message, `data: <CLOCK_MONOTONIC in microseconds>\\n\\n`, so a client on the
same machine can tell how late each event arrives:
  interval > 0  paced: events are due every `interval` seconds from the stream's start (a late
                event is sent as soon as it can be; the schedule is not shifted);
  interval = 0  flood: the next event follows as soon as send() returns and the stream has
                yielded to the event loop once (asyncio.sleep(0)), so streams take turns.
The stream ends after `seconds` (the runner's back-stop), or when the client disconnects.
GET / is a short 200, for the runner's readiness probe.
"""

import asyncio
import time
from urllib.parse import parse_qs

START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
}
HELLO = b"asgi_sse: GET /sse?interval=0.01&seconds=10\n"


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "lifespan":
        await _lifespan(receive, send)
    elif kind == "http":
        if scope["path"] == "/sse":
            await _sse(scope, receive, send)
        else:
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/plain"),
                                    (b"content-length", str(len(HELLO)).encode())]})
            await send({"type": "http.response.body", "body": HELLO})


async def _sse(scope, receive, send):
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    interval = float(query.get("interval", ["0.01"])[0])
    seconds = float(query.get("seconds", ["10"])[0])
    gone = False

    async def watch():  # http.disconnect arrives through receive() once the client leaves
        nonlocal gone
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone = True
                return

    watcher = asyncio.ensure_future(watch())
    now_ns = time.monotonic_ns
    try:
        await send(START)
        t0 = time.monotonic()
        deadline = t0 + seconds
        if interval > 0:
            due = t0
            while not gone:
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: %d\n\n" % (now_ns() // 1000)})
                due += interval
                now = time.monotonic()
                if now >= deadline:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
        else:
            # send() need not suspend while the server's write buffer has room (and after
            # the client has left), so a loop of sends alone would hold the event loop and
            # starve every other stream; sleep(0) yields once per event, as an app whose
            # events come from an always-ready async source would. The deadline ends the
            # loop even on a server whose send() stays silent after a disconnect.
            sleep = asyncio.sleep
            while not gone and time.monotonic() < deadline:
                await send({"type": "http.response.body", "more_body": True,
                            "body": b"data: %d\n\n" % (now_ns() // 1000)})
                await sleep(0)
        if not gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except Exception:  # the client left and this server raises from send()
        pass
    finally:
        watcher.cancel()


async def _lifespan(receive, send):
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
