"""asgi_fastapi: a FastAPI app whose /json route returns a small JSON document (the same
document as flask_app.py's), from an `async def` path operation with no response model."""

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

app = FastAPI()


@app.get("/", response_class=PlainTextResponse)
async def index():
    return "Hello from FastAPI!\n"


@app.get("/json")
async def json_route():
    return {
        "framework": "fastapi",
        "message": "Hello, JSON!",
        "numbers": [1, 2, 3],
        "nested": {"ok": True, "text": "caf\u00e9"},
    }
