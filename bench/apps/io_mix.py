"""io-mix: fast requests beside requests that wait on I/O, in one Flask app.

`GET /fast/<int:item_id>` returns a small JSON document (a route parameter, a query
argument, a dict built and serialised: the usual CPU work of a Flask JSON route).
`GET /io/<int:item_id>` first waits 50 ms with `time.sleep(0.05)`, which releases the GIL
as a database query or an HTTP call to another service would, then answers the same way.
The load client (bench/mix_client.py) picks one of the two at random for each request (10 %
of them `/io`) and records the latencies of each kind apart. This module is not mixed.py,
the slow-clients app. `GET /` is a health check.
"""

import time

from flask import Flask, jsonify, request

app = Flask(__name__)

IO_WAIT_S = 0.05


def _item(item_id, source):
    fields = request.args.get("fields", "id,name,price,tags").split(",")
    item = {
        "id": item_id,
        "name": f"item {item_id}",
        "price": round(9.99 + item_id % 17 * 1.25, 2),
        "tags": ["bench", source, "caf\u00e9"],
        "stock": {"warehouse": item_id % 5, "store": item_id % 3},
    }
    return jsonify(source=source, item={k: item[k] for k in fields if k in item})


@app.get("/")
def health():
    return "ok\n", 200, {"Content-Type": "text/plain"}


@app.get("/fast/<int:item_id>")
def fast(item_id):
    return _item(item_id, "cache")


@app.get("/io/<int:item_id>")
def io(item_id):
    time.sleep(IO_WAIT_S)  # the GIL is released while the thread waits
    return _item(item_id, "database")
