"""Every answer under ``/api/`` is JSON (docs/api.md#bad-input), whatever went wrong.

* Each API request gets a request id: the caller's ``x-request-id`` when it is a plain token (a load
  balancer's), else a fresh one. It is sent back in ``x-request-id`` and travels in the log lines.
* An exception a view lets escape is logged with its request id and answered
  ``500 {"error": "Internal server error", "requestId": …}``, in DEBUG too.
* Django's own error pages (the 404 of an unknown route, the 400 of a suspicious request, the 500 of a
  failing middleware) become ``{"error": "<reason>"}`` with the same status.
* A body that arrived too slowly (``RequestReadTimeout``, raised by the gunicorn worker's socket,
  docs/operations.md#slow-clients) is answered ``408 {"error": "Request body too slow: …"}``, on every path.

Paths outside ``/api/`` (the admin, ``/metrics``) are otherwise left exactly as Django answers them.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from http import HTTPStatus

from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from mollifier_project.slow_clients import RequestReadTimeout

log = logging.getLogger(__name__)

API_PREFIX = "/api/"
REQUEST_ID_HEADER = "x-request-id"
_META_KEY = "mollifier.request_id"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Django answers these itself with a 4xx page, which ``__call__`` turns into JSON: they are not server errors.
_DJANGO_CLIENT_ERRORS = (Http404, PermissionDenied, BadRequest, SuspiciousOperation)


def request_id(request: HttpRequest) -> str | None:
    """The id of an API request (None outside ``/api/``), for log lines: ``extra={"request_id": …}``."""
    value = request.META.get(_META_KEY)
    return value if isinstance(value, str) else None


def internal_error(rid: str) -> JsonResponse:
    return JsonResponse({"error": "Internal server error", "requestId": rid}, status=500)


def slow_body(exception: BaseException) -> RequestReadTimeout | None:
    """The body timeout behind ``exception``: raised as is by a ``wsgi.input`` read, or wrapped by Django's
    ``request.read`` in an ``UnreadablePostError`` (and that again by ``request.body``) whose cause it is."""
    candidate: BaseException | None = exception
    for _ in range(4):
        if candidate is None or isinstance(candidate, RequestReadTimeout):
            return candidate
        candidate = candidate.__cause__
    return None


class ApiErrorsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not request.path_info.startswith(API_PREFIX):
            return self.get_response(request)
        incoming = request.headers.get(REQUEST_ID_HEADER) or ""
        rid = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
        request.META[_META_KEY] = rid
        response = self.get_response(request)
        if response.status_code >= 400 and not response.get("Content-Type", "").startswith("application/json"):
            response = self._as_json(response.status_code, rid)
        response[REQUEST_ID_HEADER] = rid
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        late = slow_body(exception)
        if late is not None:
            log.warning("slow request body cut: %s %s: %s", request.method, request.path, late.strerror,
                     extra={"request_id": request_id(request)})  # fmt: skip
            return JsonResponse({"error": late.strerror}, status=408)
        rid = request_id(request)
        if rid is None or isinstance(exception, _DJANGO_CLIENT_ERRORS):
            return None
        log.exception(
            "unhandled %s in %s %s", type(exception).__name__, request.method, request.path,
            extra={"request_id": rid},
        )  # fmt: skip
        return internal_error(rid)

    @staticmethod
    def _as_json(status: int, rid: str) -> JsonResponse:
        if status >= 500:
            response = internal_error(rid)
            response.status_code = status
            return response
        try:
            reason = HTTPStatus(status).phrase.capitalize()
        except ValueError:
            reason = "Request failed"
        return JsonResponse({"error": reason}, status=status)
