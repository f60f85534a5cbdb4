"""asgi_starlette: a Starlette app whose /json route returns a small JSON document (the same
document as flask_app.py's) through JSONResponse."""

from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def index(request):
    return PlainTextResponse("Hello from Starlette!\n")


async def json_route(request):
    return JSONResponse(
        {
            "framework": "starlette",
            "message": "Hello, JSON!",
            "numbers": [1, 2, 3],
            "nested": {"ok": True, "text": "caf\u00e9"},
        }
    )


app = Starlette(routes=[Route("/", index), Route("/json", json_route)])
