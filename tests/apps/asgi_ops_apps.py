"""ASGI apps for tests/test_asgi_operations.py: timeouts, a blocked loop, traces, the stop."""

import asyncio
import logging
import os
import time

log = logging.getLogger("opsapp")
warmed = {}


async def warm_on_the_loop():
    await asyncio.sleep(0.05)
    warmed["loop"] = id(asyncio.get_running_loop())


async def warm_and_fail():
    raise RuntimeError("the database is unreachable")


async def wait_upstream():
    await asyncio.sleep(60)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                marker = os.environ.get("SHUTDOWN_MARKER")
                if marker:
                    with open(marker, "w") as f:
                        f.write(f"{time.time()}\n")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                print(f"websocket disconnect {message['code']}", flush=True)
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    path = scope["path"]
    if path == "/warmed":
        same = warmed.get("loop") == id(asyncio.get_running_loop())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"same loop" if same else b"other loop"})
        return
    if path == "/extensions":
        body = repr(sorted(scope["extensions"])).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if path == "/pathsend":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.pathsend", "path": os.environ["PATHSEND_FILE"]})
        return
    if path == "/pathsend-missing":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        try:
            await send({"type": "http.response.pathsend", "path": "/nonexistent/file"})
        except OSError as err:
            await send({"type": "http.response.body", "body": f"OSError: {err}".encode()})
        return
    if path == "/trailers":
        await send({"type": "http.response.start", "status": 200, "trailers": True,
                    "headers": [(b"trailer", b"x-checksum, x-count")]})
        await send({"type": "http.response.body", "body": b"part one, ", "more_body": True})
        await send({"type": "http.response.body", "body": b"part two"})
        await send({"type": "http.response.trailers", "headers": [(b"x-checksum", b"abc123")], "more_trailers": True})
        await send({"type": "http.response.trailers", "headers": [(b"x-count", b"2")]})
        return
    if path == "/upstream":
        await wait_upstream()
    elif path == "/block":
        time.sleep(1.5)
    elif path == "/log":
        # Two log records with an await between them: another request's task runs meanwhile,
        # and each record must still carry its own request's trace.
        tag = scope["query_string"].decode()
        log.warning("first record of %s", tag)
        await asyncio.sleep(0.2)
        log.warning("second record of %s", tag)
    elif path == "/slow":
        await asyncio.sleep(2.5)
    elif path == "/events":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b"data: hello\n\n", "more_body": True})
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                print("event stream told http.disconnect", flush=True)
                return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"done"})


async def factory_app(scope, receive, send):
    """Its lifespan startup installs a task factory; each request says which task runs it."""
    import asyncio

    if scope["type"] == "lifespan":
        message = await receive()
        if os.environ.get("ASGI_TASK_FACTORY") == "1":
            loop = asyncio.get_running_loop()

            def factory(loop, coro, **kwargs):
                task = asyncio.Task(coro, loop=loop, **kwargs)
                task.made_by_the_factory = True
                return task

            loop.set_task_factory(factory)
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        await send({"type": "lifespan.shutdown.complete"})
        return
    task = asyncio.current_task()
    body = f"{task.get_name()} {getattr(task, 'made_by_the_factory', False)}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
