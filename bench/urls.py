"""The project's URLs plus ``bench/noop``: the full middleware stack and a tiny JSON answer, nothing else."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt


@csrf_exempt
def noop(request: HttpRequest) -> JsonResponse:
    """What Django and gunicorn cost per request; csrf-exempt like the API views, the body is left unread."""
    return JsonResponse({"ok": True})


urlpatterns = [
    path("bench/noop", noop, name="bench-noop"),
    path("", include("mollifier_project.urls")),
]
