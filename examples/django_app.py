"""A single-file Django project with the same routes as flask_app.py.

No database and no settings module: everything lives here.
Serve it with:  coldbrew --chdir examples django_app:app
"""

import hashlib
import os

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        # Fine for an example with no sessions or signing; set a real one in a real project.
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "coldbrew-example-not-secret"),
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
        ],
        DATABASES={},
        USE_TZ=True,
    )

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from django.views.decorators.http import require_POST, require_safe  # noqa: E402


def int_arg(request, name, default):
    try:
        return int(request.GET.get(name, default))
    except ValueError:
        return default


@require_safe
def index(request):
    return HttpResponse("Hello from Django!\n", content_type="text/plain")


@require_safe
def json_view(request):
    return JsonResponse(
        {
            "framework": "django",
            "message": "Hello, JSON!",
            "numbers": [1, 2, 3],
            "nested": {"ok": True, "unicode": "caf\u00e9 \u2615"},
        }
    )


@csrf_exempt
@require_POST
def form(request):
    # Every field maps to the list of its values, so repeated fields survive.
    return JsonResponse({"form": dict(request.POST.lists())})


@csrf_exempt
@require_POST
def upload(request):
    files = []
    for field, uploads in request.FILES.lists():
        for upload in uploads:
            digest = hashlib.sha256()
            size = 0
            for block in upload.chunks():
                digest.update(block)
                size += len(block)
            files.append(
                {
                    "field": field,
                    "filename": upload.name,
                    "size": size,
                    "sha256": digest.hexdigest(),
                }
            )
    return JsonResponse({"files": files, "form": dict(request.POST.lists())})


def stream_lines(count, size):
    for i in range(count):
        yield f"chunk {i:04d} ".encode() + b"x" * size + b"\n"


@require_safe
def stream(request):
    # ?count=N&size=BYTES: N lines, each carrying BYTES filler bytes.
    count = int_arg(request, "count", 5)
    size = int_arg(request, "size", 16)
    return StreamingHttpResponse(stream_lines(count, size), content_type="text/plain")


@require_safe
def item(request, item_id):
    return JsonResponse({"item_id": item_id, "query": dict(request.GET.lists())})


urlpatterns = [
    path("", index),
    path("json", json_view),
    path("form", form),
    path("upload", upload),
    path("stream", stream),
    path("items/<int:item_id>", item),
]

application = get_wsgi_application()
app = application
