"""The plumbing every view of the HTTP API shares (docs/api.md): the ``endpoint`` decorator (method check,
bearer auth, path parameters, error mapping), JSON body parsing, the request's buffer and request key, and the
answers several resources give alike. Views (``api.views``) only parse, call a service and map its result or
error to HTTP; every error is ``{"error": "…"}``. What no view catches, ``api.middleware`` answers as JSON too
(docs/api.md#bad-input)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic import BaseModel, ValidationError

from api.middleware import request_id
from buffer.buffer import Buffer, BufferUnavailable
from runs import engine, fast_json, mutations, packets, queries, trigger
from runs.auth import authenticate
from runs.models import MAX_REQUEST_KEY_LENGTH
from runs.schemas import describe, is_unstorable, nested_too_deep

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
SMALL_BODY_BYTES = 64 * 1024  # a body of options, with no payload in it
# Path parameters (api/urls.py) → the name an error gives them.
PATH_FIELDS = {
    "task": "taskIdentifier",
    "run_id": "runId",
    "batch_id": "batchId",
    "key": "idempotencyKey",
    "action_id": "bulkActionId",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JsonResponse:
    response = JsonResponse({"error": message}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def endpoint(*methods: str) -> Callable:
    """Method check, bearer auth → ``EnvContext``, path parameters no row could match (400), and error
    mapping for an API view."""

    def decorate(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
        @csrf_exempt
        @functools.wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
            if request.method not in methods:
                return error(405, f"Method {request.method} not allowed")
            try:
                env = authenticate(request.META.get("HTTP_AUTHORIZATION"))
                if env is None:
                    return error(401, "Invalid or Missing API key")
                if problem := path_problem(kwargs):
                    return error(400, problem)
                return view(request, env, *args, **kwargs)
            except HttpError as exc:
                return error(exc.status, exc.message, exc.headers)
            except trigger.TriggerError as exc:
                return error(exc.status, exc.message, exc.headers)
            except queries.QueryError as exc:
                return error(400, str(exc))
            except (BufferUnavailable, OperationalError, InterfaceError) as exc:
                # A backing service is down: a clear, retryable JSON error, never an HTML 500.
                log.warning("%s unavailable during %s %s: %s", _service(exc), request.method, request.path, exc,
                            extra={"request_id": request_id(request)})  # fmt: skip
                engine.discard_connection()
                return error(503, f"{_service(exc)} is unavailable; retry shortly.", {"x-should-retry": "true"})
            except DatabaseError:
                # Any other refusal (DataError, IntegrityError…): bad input should have been a 4xx before
                # this, so it is logged as a bug; the connection itself is fine and is kept.
                log.exception("database error during %s %s", request.method, request.path,
                              extra={"request_id": request_id(request)})  # fmt: skip
                return error(503, "The database could not complete the request; retry shortly.",
                             {"x-should-retry": "true"})  # fmt: skip

        return wrapper

    return decorate


def _service(exc: BaseException) -> str:
    return "The buffer (Redis)" if isinstance(exc, BufferUnavailable) else "The database"


def path_problem(params: Mapping[str, object]) -> str | None:
    """Why a path parameter (``api/urls.py``) can never match anything, naming it; None if none."""
    for name, value in params.items():
        if isinstance(value, str) and "\x00" in value:
            return f"{PATH_FIELDS.get(name, name)}: must not contain a NUL character"
    return None


def request_buffer() -> Buffer:
    """The buffer on the ``request`` client: short timeouts and a circuit breaker
    (docs/operations.md#redis-timeouts-and-the-circuit-breaker)."""
    return Buffer.from_settings("request")


def json_body(request: HttpRequest, model: type[M], *, limit: int) -> M:
    """The body as ``model``: 413 over ``limit`` bytes, 400 when it is no JSON object or fails the schema
    (naming the field), 422 when every failure is a value no row could hold."""
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > limit:
        raise HttpError(413, f"Request body of {length} bytes exceeds the limit of {limit} bytes")
    raw = request.body
    if not raw.strip():
        raise HttpError(400, "Request body is empty")
    try:
        data = fast_json.loads(raw)
    except ValueError:
        raise HttpError(400, "Invalid JSON") from None
    except RecursionError:  # far deeper than MAX_JSON_DEPTH, which the schema checks for shallower bodies
        raise HttpError(400, nested_too_deep("Request body")) from None
    if not isinstance(data, dict):
        raise HttpError(400, "Request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HttpError(422 if is_unstorable(exc) else 400, describe(exc)) from None


def payload_body_bytes(max_payload_bytes: int) -> int:
    """The limit of a body that carries a payload: the payload plus room for options."""
    return max_payload_bytes + 256 * 1024


def has_body(request: HttpRequest) -> bool:
    length = request.META.get("CONTENT_LENGTH") or ""
    return (length.isdigit() and int(length) > 0) or bool(request.META.get("HTTP_TRANSFER_ENCODING"))


def whole_body(request: HttpRequest, limit: int) -> bytes:
    """The whole body, also when it arrives chunked without Content-Length (gunicorn sets
    ``wsgi.input_terminated``; Django's ``request.body`` would read nothing, see docs/api.md#stream-batch-items)."""
    if request.META.get("CONTENT_LENGTH"):
        length = request.META["CONTENT_LENGTH"]
        if length.isdigit() and int(length) > limit:
            raise HttpError(413, f"Request body of {length} bytes exceeds the limit of {limit} bytes")
        return request.body
    if request.META.get("wsgi.input_terminated"):
        data = request.META["wsgi.input"].read(limit + 1)
        if len(data) > limit:
            raise HttpError(413, f"Request body exceeds the limit of {limit} bytes")
        return data
    return request.body


def request_key(request: HttpRequest) -> str | None:
    """The ``x-trigger-request-idempotency-key`` header (the SDK sends a UUID), bounded so Postgres can record it
    during a Redis outage (docs/api.md#request-idempotency)."""
    key = request.headers.get("x-trigger-request-idempotency-key") or None
    if key is not None and len(key) > MAX_REQUEST_KEY_LENGTH:
        raise HttpError(400, f"x-trigger-request-idempotency-key: at most {MAX_REQUEST_KEY_LENGTH} characters")
    return key


def packet_uri(request: HttpRequest) -> Callable[[str], str]:
    """Makes a presigned packet URL's path absolute: on ``PACKET_ORIGIN`` if set (docs/api.md#packets)."""
    return packets.url_builder(request.build_absolute_uri, settings.MOLLIFIER.PACKET_ORIGIN)


def being_created(run_id: str) -> JsonResponse:
    """503 for a run leased by the drain right now: its row is about to exist, so a retry will find it."""
    return error(503, f"Run {run_id} is being created right now; retry in a moment.", {"x-should-retry": "true"})


def mutation_response(run_id: str, result: mutations.Mutation, ok: dict[str, Any]) -> JsonResponse:
    """A mutation's answer: ``ok`` when it landed, else the 404, 503 or 422 its status means."""
    if result.status == mutations.Status.NOT_FOUND:
        return error(404, "Run not found")
    if result.status == mutations.Status.BUSY:
        return being_created(run_id)
    if result.status == mutations.Status.TOO_MANY:
        return error(422, f"Runs can only have 10 tags, you're trying to set {result.count}.")
    return JsonResponse(ok)
