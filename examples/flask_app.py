"""A small Flask application covering the usual request and response shapes.

Serve it with:  coldbrew --chdir examples flask_app:app
"""

import hashlib

from flask import Flask, Response, jsonify, request

app = Flask(__name__)

CHUNK = 64 * 1024


@app.get("/")
def index():
    return Response("Hello from Flask!\n", mimetype="text/plain")


@app.get("/json")
def json_view():
    return jsonify(
        framework="flask",
        message="Hello, JSON!",
        numbers=[1, 2, 3],
        nested={"ok": True, "unicode": "caf\u00e9 \u2615"},
    )


@app.post("/form")
def form():
    # Every field maps to the list of its values, so repeated fields survive.
    return jsonify(form=dict(request.form.lists()))


@app.post("/upload")
def upload():
    files = []
    for field, storages in request.files.lists():
        for storage in storages:
            digest = hashlib.sha256()
            size = 0
            while True:
                block = storage.stream.read(CHUNK)
                if not block:
                    break
                digest.update(block)
                size += len(block)
            files.append(
                {
                    "field": field,
                    "filename": storage.filename,
                    "size": size,
                    "sha256": digest.hexdigest(),
                }
            )
    return jsonify(files=files, form=dict(request.form.lists()))


def stream_lines(count, size):
    for i in range(count):
        yield f"chunk {i:04d} ".encode() + b"x" * size + b"\n"


@app.get("/stream")
def stream():
    # ?count=N&size=BYTES: N lines, each carrying BYTES filler bytes.
    count = request.args.get("count", default=5, type=int)
    size = request.args.get("size", default=16, type=int)
    return Response(stream_lines(count, size), mimetype="text/plain")


@app.get("/items/<int:item_id>")
def item(item_id):
    return jsonify(item_id=item_id, query=dict(request.args.lists()))
