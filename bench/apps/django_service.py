"""django-service: a single-file Django project as `django-admin startproject` sets one up.

The settings keep startproject's default middleware stack (Security, Session, Common, Csrf,
Authentication, Message, XFrameOptions), its template context processors, and the apps that
middleware needs (contenttypes, auth, sessions, messages). `GET /products/<int:product_id>/`
renders a product page through `render()`: a Django template that extends a base template,
loops over the product's variants and reviews, reverses URLs, shows the user's messages and
whether they are logged in, and holds a `{% csrf_token %}` form. The view also records the
product in the session, so every response carries a session cookie and a CSRF cookie.

No request touches a database: sessions are signed cookies and the messages live in the
session or in cookies; `request.user` is evaluated (the template asks whether the user is
authenticated), which with no session key is an AnonymousUser, found without a query.
DATABASES is left empty, so any query would fail the request with a 500 rather than pass
unnoticed. `GET /` is a health check, which the runner polls until the server is up.

Templates are found from this file, not from the working directory.
"""

import os

from django.conf import settings

HERE = os.path.dirname(os.path.abspath(__file__))

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="bench-only-not-secret-django-service",
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
        ],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
            "django.middleware.clickjacking.XFrameOptionsMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [os.path.join(HERE, "templates")],
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ],
                },
            },
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASES={},
        USE_TZ=True,
        TIME_ZONE="UTC",
        USE_I18N=True,
        LANGUAGE_CODE="en-us",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )

import datetime  # noqa: E402

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import Http404, HttpResponse  # noqa: E402
from django.shortcuts import render  # noqa: E402
from django.urls import path  # noqa: E402


def _catalog():
    """A fixed catalog, built once at import: what a cache or an ORM would hand the view."""
    colours = ["black", "white", "navy", "olive", "sand", "red"]
    sizes = ["XS", "S", "M", "L", "XL"]
    base = datetime.datetime(2026, 11, 1, 9, 30, tzinfo=datetime.timezone.utc)
    out = {}
    for pid in range(1, 101):
        out[pid] = {
            "id": pid,
            "name": f"Organic cotton hoodie \u201cModel {pid}\u201d",
            "description": "Heavyweight brushed cotton, <em>pre-shrunk</em> & dyed without solvents.",
            "price": 59.0 + pid % 7 * 5,
            "variants": [{"sku": f"HD-{pid:03d}-{c[:3].upper()}-{s}", "colour": c, "size": s,
                          "stock": (pid * 7 + i * 3) % 12}
                         for i, (c, s) in enumerate((c, s) for c in colours[:3] for s in sizes[1:])],
            "reviews": [{"author": f"customer{(pid + i) % 37}", "rating": 1 + (pid + i) % 5,
                         "title": "Fits as expected" if i % 2 else "Warm, but runs small",
                         "body": "Washed it three times at 40 \u00b0C: no shrinking, colour holds. "
                                 "Would buy again <3",
                         "created": base + datetime.timedelta(days=i, hours=pid % 24)}
                        for i in range(5)],
            "related": [1 + (pid + k * 13) % 100 for k in range(1, 5)],
        }
    return out


CATALOG = _catalog()


def health(request):
    return HttpResponse("ok\n", content_type="text/plain")


def product(request, product_id):
    item = CATALOG.get(product_id)
    if item is None:
        raise Http404("no such product")
    recent = [p for p in request.session.get("recently_viewed", []) if p != product_id]
    request.session["recently_viewed"] = [product_id] + recent[:4]
    in_stock = [v for v in item["variants"] if v["stock"]]
    rating = sum(r["rating"] for r in item["reviews"]) / len(item["reviews"])
    return render(request, "django_service/product.html", {
        "product": item,
        "in_stock": in_stock,
        "rating": rating,
        "related": [CATALOG[p] for p in item["related"]],
        "recent": [CATALOG[p] for p in recent[:4]],
    })


def add_to_cart(request, product_id):  # the form's target; the benchmark only GETs
    return HttpResponse(status=204)


urlpatterns = [
    path("", health),
    path("products/<int:product_id>/", product, name="product"),
    path("products/<int:product_id>/cart/", add_to_cart, name="add-to-cart"),
]

app = get_wsgi_application()
