"""``GET /api/openapi.json``: the OpenAPI document of these routes (``api.openapi``, docs/api.md#openapi-document)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from api import openapi
from api.http import error


@csrf_exempt
def openapi_document(request: HttpRequest) -> HttpResponse:
    """The OpenAPI 3.1 document of these routes (docs/api.md#openapi-document): no key needed, built once per process."""
    if request.method not in ("GET", "HEAD"):
        return error(405, f"Method {request.method} not allowed")
    return HttpResponse(openapi.document_bytes(), content_type="application/json")
