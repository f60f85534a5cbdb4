"""A single-file Django project served through its ASGI handler, with an async view."""

import asyncio

from django.conf import settings

if not settings.configured:
    settings.configure(
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY="coldbrew-tests-not-secret",
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        DATABASES={},
        USE_TZ=True,
    )

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402


async def async_view(request, item_id):
    await asyncio.sleep(0)
    return JsonResponse({"item_id": item_id, "async": True, "q": request.GET.get("q")})


def sync_view(request):
    return JsonResponse({"sync": True})


urlpatterns = [path("items/<int:item_id>", async_view), path("sync", sync_view)]

application = get_asgi_application()
