"""HTTP API in the trigger.dev v4 wire format (docs/api.md). Views only parse, call a service and map its
result or error to HTTP; every error is ``{"error": "…"}``. What no view catches, ``api.middleware``
answers as JSON too (docs/api.md#bad-input)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from pydantic import BaseModel, ValidationError

from api import openapi
from api.middleware import request_id
from buffer.buffer import Buffer, BufferUnavailable
from mollifier_project.clock import from_ms, now_ms
from runs import batches, codec, engine, mutations, packets, queries, trigger
from runs.auth import EnvContext, authenticate
from runs.models import MAX_REQUEST_KEY_LENGTH
from runs.schemas import (
    CreateBatchBody,
    ResetIdempotencyBody,
    TagsBody,
    TriggerBody,
    describe,
    is_unstorable,
    nested_too_deep,
    path_problem,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
MAX_BATCH_BODY_BYTES = 100 * 1024 * 1024


class HttpError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def packet_uri(request: HttpRequest) -> Callable[[str], str]:
    """Makes a presigned packet URL's path absolute: on ``PACKET_ORIGIN`` if set (docs/api.md#packets)."""
    return packets.url_builder(request.build_absolute_uri, settings.MOLLIFIER.PACKET_ORIGIN)


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


def _buffer() -> Buffer:
    return Buffer.from_settings("request")


def _json_body(request: HttpRequest, model: type[M], *, limit: int) -> M:
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > limit:
        raise HttpError(413, f"Request body of {length} bytes exceeds the limit of {limit} bytes")
    raw = request.body
    if not raw.strip():
        raise HttpError(400, "Request body is empty")
    try:
        data = codec.loads(raw)
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


def _request_key(request: HttpRequest) -> str | None:
    """The ``x-trigger-request-idempotency-key`` header (the SDK sends a UUID), bounded so Postgres can record it
    during a Redis outage (docs/api.md#request-idempotency)."""
    key = request.headers.get("x-trigger-request-idempotency-key") or None
    if key is not None and len(key) > MAX_REQUEST_KEY_LENGTH:
        raise HttpError(400, f"x-trigger-request-idempotency-key: at most {MAX_REQUEST_KEY_LENGTH} characters")
    return key


def _body_limit(max_payload_bytes: int) -> int:
    return max_payload_bytes + 256 * 1024  # payload plus room for options


# ------------------------------------------------------------------------------------------- trigger


@endpoint("POST")
def trigger_task(request: HttpRequest, env: EnvContext, task: str) -> HttpResponse:
    cfg = settings.MOLLIFIER  # read once: the settings of this request
    clock = now_ms()
    body = _json_body(request, TriggerBody, limit=_body_limit(cfg.MAX_PAYLOAD_BYTES))
    snapshot = trigger.prepare(
        env,
        task,
        body.options,
        body.payload,
        now_ms=clock,
        max_payload_bytes=cfg.MAX_PAYLOAD_BYTES,
        max_metadata_bytes=cfg.MAX_METADATA_BYTES,
    )
    result = trigger.trigger(
        env, snapshot, buffer=_buffer(), cfg=cfg, now_ms=clock, bypass=trigger.is_bypass(body.options),
        request_key=_request_key(request),
    )  # fmt: skip
    # The same document as JsonResponse, compact and written by orjson (runs.codec): the hot path's answer.
    return HttpResponse(codec.dumps_bytes({"id": result.run_id, "isCached": result.is_cached}),
                        content_type="application/json")  # fmt: skip


# ------------------------------------------------------------------------------------------- batches


@endpoint("POST")
def create_batch(request: HttpRequest, env: EnvContext) -> JsonResponse:
    body = _json_body(request, CreateBatchBody, limit=1024 * 1024)
    created = batches.create(env, body, now=from_ms(now_ms()))
    doc = {"id": created.batch.id, "runCount": created.batch.run_count, "isCached": created.is_cached}
    if created.batch.idempotency_key:
        doc["idempotencyKey"] = created.batch.idempotency_key
    return JsonResponse(doc, status=202)


def _stream(request: HttpRequest, limit: int) -> bytes:
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


@endpoint("POST")
def batch_items(request: HttpRequest, env: EnvContext, batch_id: str) -> JsonResponse:
    content_type = request.content_type or ""
    if content_type not in NDJSON_TYPES:
        return error(415, f"Content-Type must be application/x-ndjson, got {content_type or 'none'!r}")
    body = _stream(request, MAX_BATCH_BODY_BYTES)
    try:
        result = batches.ingest(
            env, batch_id, body.splitlines(), buffer=_buffer(), cfg=settings.MOLLIFIER, now_ms=now_ms()
        )
    except batches.BatchNotFound:
        return error(404, "Batch not found")
    except RecursionError:  # a line too deep for json.loads; shallower ones fail the schema as "line N: …"
        return error(400, nested_too_deep("Request body"))
    return JsonResponse(
        {
            "id": result.batch_id,
            "itemsAccepted": result.accepted,
            "itemsDeduplicated": result.deduplicated,
            "sealed": result.sealed,
        }
    )


@endpoint("GET")
def retrieve_batch(request: HttpRequest, env: EnvContext, batch_id: str) -> JsonResponse:
    doc = batches.retrieve(env, batch_id)
    return JsonResponse(doc) if doc else error(404, "Batch not found")


# ---------------------------------------------------------------------------------------------- runs


@endpoint("GET")
def retrieve_run(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    found = queries.retrieve(env, run_id, buffer=_buffer(), now=from_ms(now_ms()))
    if found.lost_at is not None:  # retrying cannot bring it back: say what happened, so the client triggers again
        lost = found.lost_at.isoformat(timespec="seconds")
        message = (
            f"Run not found: the buffer lost runs that were waiting to be written (a data loss detected {lost}); "
            "this run may have been one of them. Trigger it again."
        )
        return error(404, message, {"x-should-retry": "false"})
    if found.doc is None:
        return error(404, "Run not found", {"x-should-retry": "true" if found.maybe_in_flight else "false"})
    return JsonResponse(packets.absolute(found.doc, packet_uri(request)))


@endpoint("GET")
def list_runs(request: HttpRequest, env: EnvContext) -> JsonResponse:
    params = {key: request.GET.get(key, "") for key in request.GET}
    return JsonResponse(queries.list_runs(env, params, now=from_ms(now_ms())))


def _mutation_response(run_id: str, result: mutations.Mutation, ok: dict[str, Any]) -> JsonResponse:
    if result.status == mutations.Status.NOT_FOUND:
        return error(404, "Run not found")
    if result.status == mutations.Status.BUSY:
        return error(503, f"Run {run_id} is being created right now; retry in a moment.", {"x-should-retry": "true"})
    if result.status == mutations.Status.TOO_MANY:
        return error(422, f"Runs can only have 10 tags, you're trying to set {result.count}.")
    return JsonResponse(ok)


@endpoint("POST")
def cancel_run(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    result = mutations.cancel(env, run_id, buffer=_buffer(), now_ms=now_ms(), wait_ms=settings.MOLLIFIER.MUTATE_WAIT_MS)
    return _mutation_response(run_id, result, {"id": run_id})


@endpoint("POST")
def add_tags(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    body = _json_body(request, TagsBody, limit=64 * 1024)
    tags = list(dict.fromkeys(body.tags))
    if len(tags) > 10:
        return error(422, f"Runs can only have 10 tags, you're trying to set {len(tags)}.")
    result = mutations.add_tags(
        env, run_id, tags, buffer=_buffer(), now_ms=now_ms(), wait_ms=settings.MOLLIFIER.MUTATE_WAIT_MS
    )
    return _mutation_response(run_id, result, {"message": f"Successfully set {result.count} new tags."})


@endpoint("POST")
def reset_idempotency_key(request: HttpRequest, env: EnvContext, key: str) -> JsonResponse:
    body = _json_body(request, ResetIdempotencyBody, limit=64 * 1024)
    if not mutations.reset_idempotency_key(env, body.taskIdentifier, key, buffer=_buffer(), now_ms=now_ms()):
        return error(404, f"No run found with idempotency key {key!r} for task {body.taskIdentifier!r}")
    return JsonResponse({"id": key})


# ------------------------------------------------------------------------------------------- openapi


@csrf_exempt
def openapi_document(request: HttpRequest) -> HttpResponse:
    """The OpenAPI 3.1 document of these routes (docs/api.md#openapi-document): no key needed, built once per process."""
    if request.method not in ("GET", "HEAD"):
        return error(405, f"Method {request.method} not allowed")
    return HttpResponse(openapi.document_bytes(), content_type="application/json")
