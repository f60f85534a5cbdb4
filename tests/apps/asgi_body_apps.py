"""ASGI apps for tests/test_asgi_body.py: request bodies streamed to receive() in pieces.

`app` is raw ASGI 3. Every route that reads a body takes an `id` in its query string and
leaves what it saw in `seen[id]` (the whole account, once the request is over) and
`progress[id]` (bytes so far), which `/last?id=...` and `/progress?id=...` answer, so a test
can see what the app was told even when the client that sent the body got no answer from it.

`fastapi_app` and `starlette_app` read a body through the frameworks' own request objects.
"""

import asyncio
import hashlib
import json
from urllib.parse import parse_qs

seen = {}
progress = {}
# /hold waits on this until /release sets it (one worker, one event loop: a module global).
release = asyncio.Event()


def request_id(scope):
    return parse_qs(scope["query_string"].decode()).get("id", [""])[0]


async def respond(send, status, payload):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def new_account():
    return {"types": [], "lengths": [], "more": [], "total": 0, "sha": hashlib.sha256()}


async def read_into(receive, account, rid, until_end=True, count=None):
    """Calls receive() until the body ends or a disconnect (or `count` messages), noting each message."""
    taken = 0
    while count is None or taken < count:
        message = await receive()
        taken += 1
        account["types"].append(message["type"])
        if message["type"] != "http.request":
            break
        body = message.get("body", b"")
        more = message.get("more_body", False)
        account["lengths"].append(len(body))
        account["more"].append(more)
        account["total"] += len(body)
        account["sha"].update(body)
        progress[rid] = {"messages": len(account["lengths"]), "total": account["total"]}
        if not more:
            break
    return account


def summary(account):
    return {
        "types": account["types"],
        "messages": len(account["lengths"]),
        "lengths": account["lengths"],
        "more": account["more"],
        "total": account["total"],
        "sha256": account["sha"].hexdigest(),
        "disconnected": "http.disconnect" in account["types"],
    }


async def answer_and_record(send, rid, account):
    result = summary(account)
    try:
        await respond(send, 200, result)
        result["send"] = "ok"
    except Exception as exc:  # a client that is gone: the send fails, which is recorded too
        result["send"] = f"{type(exc).__name__}: {exc}"
    seen[rid] = result


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    rid = request_id(scope)
    if path == "/digest":
        # Reads the whole body, then answers what it saw.
        account = await read_into(receive, new_account(), rid)
        await answer_and_record(send, rid, account)
    elif path == "/hold":
        # Reads one message, then reads nothing more until /release.
        account = await read_into(receive, new_account(), rid, count=1)
        await release.wait()
        if account["more"] and account["more"][-1]:
            await read_into(receive, account, rid)
        await answer_and_record(send, rid, account)
    elif path == "/late":
        # Calls receive() for the first time only after /release.
        progress[rid] = {"messages": 0, "total": 0, "waiting": True}
        await release.wait()
        account = await read_into(receive, new_account(), rid)
        await answer_and_record(send, rid, account)
    elif path == "/early":
        # Begins the response, then reads the body; answers the rest after it.
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"early\n", "more_body": True})
        account = await read_into(receive, new_account(), rid)
        result = summary(account)
        try:
            await send({"type": "http.response.body", "body": b"read %d\n" % account["total"]})
            result["send"] = "ok"
        except Exception as exc:
            result["send"] = f"{type(exc).__name__}: {exc}"
        seen[rid] = result
    elif path == "/release":
        release.set()
        await respond(send, 200, {"released": True})
    elif path == "/ignore":
        # Answers without ever calling receive().
        await respond(send, 200, b"ignored")
    elif path == "/last":
        if rid in seen:
            await respond(send, 200, seen[rid])
        else:
            await respond(send, 404, {"pending": rid})
    elif path == "/progress":
        await respond(send, 200, progress.get(rid, {"messages": 0, "total": 0}))
    elif path == "/ping":
        await respond(send, 200, b"pong")
    else:
        await respond(send, 404, b"not found")


# --- frameworks -------------------------------------------------------------------------

from fastapi import FastAPI, Request  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

fastapi_app = FastAPI()


@fastapi_app.post("/upload")
async def fastapi_upload(request: Request):
    body = await request.body()
    return {"total": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def starlette_stream(request):
    digest = hashlib.sha256()
    total = 0
    chunks = 0
    async for chunk in request.stream():
        if chunk:
            chunks += 1
            total += len(chunk)
            digest.update(chunk)
    return JSONResponse({"total": total, "sha256": digest.hexdigest(), "chunks": chunks})


starlette_app = Starlette(routes=[Route("/stream", starlette_stream, methods=["POST"])])
