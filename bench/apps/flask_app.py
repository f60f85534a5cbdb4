"""flask: a Flask app whose /json route returns a small JSON document."""

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/")
def index():
    return "Hello from Flask!\n", 200, {"Content-Type": "text/plain"}


@app.get("/json")
def json_route():
    return jsonify(
        framework="flask",
        message="Hello, JSON!",
        numbers=[1, 2, 3],
        nested={"ok": True, "text": "caf\u00e9"},
    )
