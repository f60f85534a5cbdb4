"""django: a single-file Django project (settings.configure, no database) with a JSON view."""

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="bench-only-not-secret",
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
        ],
        DATABASES={},
        USE_TZ=True,
    )

from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpResponse, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


def index(request):
    return HttpResponse("Hello from Django!\n", content_type="text/plain")


def json_view(request):
    return JsonResponse(
        {
            "framework": "django",
            "message": "Hello, JSON!",
            "numbers": [1, 2, 3],
            "nested": {"ok": True, "text": "caf\u00e9"},
        }
    )


urlpatterns = [path("", index), path("json", json_view)]

app = get_wsgi_application()
