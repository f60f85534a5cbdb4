from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route


async def hello(request):
    return JSONResponse({"hello": request.path_params["name"], "q": request.query_params.get("q")})


async def echo(request):
    return PlainTextResponse((await request.body()).decode()[::-1])


app = Starlette(routes=[Route("/hello/{name}", hello), Route("/echo", echo, methods=["POST"])])
