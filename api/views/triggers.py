"""Trigger a task, and reset a task's idempotency key (docs/api.md#trigger-a-task, #reset-an-idempotency-key):
parse, call ``runs.trigger`` or ``runs.mutations``, map the result to HTTP."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from api.http import SMALL_BODY_BYTES, endpoint, error, json_body, payload_body_bytes, request_buffer, request_key
from mollifier_project.clock import now_ms
from runs import fast_json, mutations, trigger
from runs.auth import EnvContext
from runs.schemas import ResetIdempotencyBody, TriggerBody


@endpoint("POST")
def trigger_task(request: HttpRequest, env: EnvContext, task: str) -> HttpResponse:
    cfg = settings.MOLLIFIER  # read once: the settings of this request
    clock = now_ms()
    body = json_body(request, TriggerBody, limit=payload_body_bytes(cfg.MAX_PAYLOAD_BYTES))
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
        env, snapshot, buffer=request_buffer(), cfg=cfg, now_ms=clock, bypass=trigger.is_bypass(body.options),
        request_key=request_key(request),
    )  # fmt: skip
    # The same document as JsonResponse, compact and written by orjson (runs.fast_json): the hot path's answer.
    return HttpResponse(fast_json.dumps_bytes({"id": result.run_id, "isCached": result.is_cached}),
                        content_type="application/json")  # fmt: skip


@endpoint("POST")
def reset_idempotency_key(request: HttpRequest, env: EnvContext, key: str) -> JsonResponse:
    body = json_body(request, ResetIdempotencyBody, limit=SMALL_BODY_BYTES)
    if not mutations.reset_idempotency_key(env, body.taskIdentifier, key, buffer=request_buffer(), now_ms=now_ms()):
        return error(404, f"No run found with idempotency key {key!r} for task {body.taskIdentifier!r}")
    return JsonResponse({"id": key})
