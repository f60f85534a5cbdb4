"""A small FastAPI application: JSON, path and query parameters, a Pydantic body, a streamed
response, server-sent events, a websocket, and a lifespan that opens a resource.

Serve it with:  coldbrew --chdir examples fastapi_app:app
(pip install fastapi; uvloop too if you like: coldbrew uses it when it is installed.)
"""

import asyncio
import hashlib
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel

CHUNK = 64 * 1024


class Counter:
    """Stands in for a client or pool the app opens once per worker (a database, httpx)."""

    def __init__(self):
        self.opened = True
        self.served = 0

    async def close(self):
        self.opened = False


@asynccontextmanager
async def lifespan(app):
    # Runs in each worker before the port opens: open clients and pools here, not at import.
    app.state.counter = Counter()
    yield {"counter": app.state.counter}
    # Runs after SIGTERM, in what is left of --graceful-timeout.
    await app.state.counter.close()


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
async def index():
    return "Hello from FastAPI!\n"


@app.get("/json")
async def json_view(request: Request):
    counter = request.state.counter
    counter.served += 1
    return {
        "framework": "fastapi",
        "message": "Hello, JSON!",
        "numbers": [1, 2, 3],
        "nested": {"ok": True, "unicode": "caf\u00e9 \u2615"},
        "resource_open": counter.opened,
    }


@app.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None, limit: int = 10):
    return {"item_id": item_id, "q": q, "limit": limit}


class Order(BaseModel):
    name: str
    quantity: int
    price: float
    tags: list[str] = []


@app.post("/orders")
async def create_order(order: Order):
    return {"order": order.model_dump(), "total": round(order.quantity * order.price, 2)}


@app.post("/upload")
async def upload(request: Request):
    digest = hashlib.sha256()
    size = 0
    async for chunk in request.stream():
        digest.update(chunk)
        size += len(chunk)
    return {"size": size, "sha256": digest.hexdigest()}


@app.get("/stream")
async def stream(count: int = 16, size: int = CHUNK):
    async def chunks():
        for i in range(count):
            yield bytes([65 + i % 26]) * size

    return StreamingResponse(chunks(), media_type="application/octet-stream")


@app.get("/events")
async def events(count: int = 5, interval: float = 0.05):
    async def stream():
        for i in range(count):
            yield f"id: {i}\ndata: tick {i}\n\n"
            await asyncio.sleep(interval)

    return StreamingResponse(stream(), media_type="text/event-stream")


@app.websocket("/ws")
async def echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"echo: {text}")
    except WebSocketDisconnect:
        pass
