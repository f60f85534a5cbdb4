"""flask-service: what a Flask service does per request, beyond returning a constant.

`POST /orders/<int:order_id>` takes a JSON order (wrk sends bench/wrk/order.json, about
4 KiB with 30 line items), validates it, totals it, renders a Jinja2 HTML page with a
loop over the items (autoescaped: the order's note and customer name hold `<`, `&` and
quotes) and sets a cookie. `GET /` is a health check, which the runner polls until the
server is up.

The template folder is found from this file, not from the working directory, so every
server loads the same templates whatever directory it runs in.
"""

import os

from flask import Flask, abort, make_response, render_template, request

HERE = os.path.dirname(os.path.abspath(__file__))

app = Flask(__name__, template_folder=os.path.join(HERE, "templates"))

TAX_RATE = {"FR": 0.20, "DE": 0.19, "NL": 0.21}
COUPONS = {"WINTER10": 0.10}


def _cents(v, what):
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        abort(400, f"{what}: expected a non-negative integer amount in cents")
    return v


@app.get("/")
def health():
    return "ok\n", 200, {"Content-Type": "text/plain"}


@app.post("/orders/<int:order_id>")
def order(order_id):
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "expected a JSON object")
    if data.get("order_id") != order_id:
        abort(400, "order_id in the body does not match the URL")
    items = data.get("items")
    if not isinstance(items, list) or not 0 < len(items) <= 100:
        abort(400, "items: expected 1 to 100 line items")
    lines = []
    subtotal = discount = units = 0
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("sku"), str) or not isinstance(it.get("name"), str):
            abort(400, f"items[{i}]: sku and name are required")
        qty = it.get("quantity")
        if not isinstance(qty, int) or isinstance(qty, bool) or not 0 < qty <= 1000:
            abort(400, f"items[{i}].quantity: expected 1 to 1000")
        price = _cents(it.get("unit_price"), f"items[{i}].unit_price")
        off = _cents(it.get("discount", 0), f"items[{i}].discount")
        total = qty * price - off
        subtotal += qty * price
        discount += off
        units += qty
        lines.append({"sku": it["sku"], "name": it["name"], "category": it.get("category", ""),
                      "quantity": qty, "unit_price": price, "discount": off, "total": total})
    shipping = data.get("shipping") or {}
    address = shipping.get("address") or {}
    country = address.get("country")
    if country not in TAX_RATE:
        abort(400, "shipping.address.country: not a country we ship to")
    coupon = data.get("coupon")
    coupon_off = round((subtotal - discount) * COUPONS.get(coupon, 0.0))
    net = subtotal - discount - coupon_off + _cents(shipping.get("price_cents", 0), "shipping.price_cents")
    tax = round(net * TAX_RATE[country] / (1 + TAX_RATE[country]))  # prices include VAT
    customer = data.get("customer") or {}
    html = render_template(
        "flask_service/order.html",
        order_id=order_id, currency=data.get("currency", "EUR"), customer=customer, address=address,
        shipping=shipping, note=data.get("note", ""), coupon=coupon, coupon_off=coupon_off,
        lines=lines, units=units, subtotal=subtotal, discount=discount, tax=tax, total=net,
    )
    resp = make_response(html)
    resp.set_cookie("last_order", str(order_id), max_age=30 * 24 * 3600, httponly=True, samesite="Lax")
    return resp


@app.template_filter("money")
def money(cents, currency="EUR"):
    return f"{cents / 100:,.2f} {currency}"
