"""A FastAPI app, as a user writes one: JSON, parameters, a Pydantic body, streaming, a lifespan."""

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel


@asynccontextmanager
async def lifespan(app):
    yield {"pool": "open"}


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q}


@app.post("/items")
async def create_item(item: Item):
    return {"name": item.name, "total": item.price * 2}


@app.get("/state")
async def state(request: Request):
    return {"pool": request.state.pool}


@app.get("/events")
async def events():
    async def stream():
        for i in range(3):
            yield f"data: {i}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


# Websockets, as a user writes them: an echo that ends on WebSocketDisconnect, and a route that
# says what the last one ended with.
ws_disconnects = []


@app.websocket("/ws")
async def ws_echo(websocket: WebSocket, greeting: str = "hello"):
    await websocket.accept()
    await websocket.send_text(greeting)
    try:
        while True:
            text = await websocket.receive_text()
            await websocket.send_text(f"echo: {text}")
    except WebSocketDisconnect as exc:
        ws_disconnects.append(exc.code)


@app.get("/ws/disconnects")
async def ws_disconnects_seen():
    return {"codes": ws_disconnects}
