"""Batches (docs/api.md#create-a-batch, #stream-batch-items, #retrieve-a-batch): create one, stream its items
as NDJSON, read it back. Parse, call ``runs.batches``, map the result to HTTP."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from api.http import endpoint, error, json_body, request_buffer, whole_body
from mollifier_project.clock import from_ms, now_ms
from runs import batches
from runs.auth import EnvContext
from runs.schemas import CreateBatchBody, nested_too_deep

NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
MAX_BATCH_BODY_BYTES = 100 * 1024 * 1024


@endpoint("POST")
def create_batch(request: HttpRequest, env: EnvContext) -> JsonResponse:
    body = json_body(request, CreateBatchBody, limit=1024 * 1024)
    created = batches.create(env, body, now=from_ms(now_ms()))
    doc = {"id": created.batch.id, "runCount": created.batch.run_count, "isCached": created.is_cached}
    if created.batch.idempotency_key:
        doc["idempotencyKey"] = created.batch.idempotency_key
    return JsonResponse(doc, status=202)


@endpoint("POST")
def batch_items(request: HttpRequest, env: EnvContext, batch_id: str) -> JsonResponse:
    content_type = request.content_type or ""
    if content_type not in NDJSON_TYPES:
        return error(415, f"Content-Type must be application/x-ndjson, got {content_type or 'none'!r}")
    body = whole_body(request, MAX_BATCH_BODY_BYTES)
    try:
        result = batches.ingest(
            env, batch_id, body.splitlines(), buffer=request_buffer(), cfg=settings.MOLLIFIER, now_ms=now_ms()
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
