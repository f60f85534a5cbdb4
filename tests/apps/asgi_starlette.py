from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect


async def hello(request):
    return JSONResponse({"hello": request.path_params["name"], "q": request.query_params.get("q")})


async def echo(request):
    return PlainTextResponse((await request.body()).decode()[::-1])


ws_disconnects = []


async def ws_echo(websocket):
    room = websocket.path_params["room"]
    await websocket.accept(subprotocol="chat" if "chat" in websocket.scope["subprotocols"] else None)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message["code"])
            if message.get("text") is not None:
                await websocket.send_text(f"{room}: {message['text'].upper()}")
            else:
                await websocket.send_bytes(message["bytes"][::-1])
    except WebSocketDisconnect as exc:
        ws_disconnects.append(exc.code)


async def ws_disconnects_seen(request):
    return JSONResponse({"codes": ws_disconnects})


app = Starlette(routes=[
    Route("/hello/{name}", hello),
    Route("/echo", echo, methods=["POST"]),
    WebSocketRoute("/ws/{room}", ws_echo),
    Route("/ws-disconnects", ws_disconnects_seen),
])
