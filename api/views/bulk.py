"""Bulk-action views (docs/api.md#bulk-actions): parse, call ``runs.bulk``, map to HTTP. The decorator and
error mapping are ``api.http``'s; another env's action is 404."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from api.http import endpoint, error, json_body
from mollifier_project.clock import now_ms
from runs import bulk
from runs.auth import EnvContext
from runs.bulk_schemas import CreateBulkActionBody

MAX_BODY_BYTES = 8 * 1024 * 1024  # 100,000 run ids of up to 64 characters fit


@endpoint("GET", "POST")
def bulk_actions(request: HttpRequest, env: EnvContext) -> JsonResponse:
    if request.method == "GET":
        params = {key: request.GET.get(key, "") for key in request.GET}
        return JsonResponse(bulk.list_actions(env, params))
    body = json_body(request, CreateBulkActionBody, limit=MAX_BODY_BYTES)
    try:
        action = bulk.create(env, body, now_ms=now_ms())
    except bulk.BulkError as exc:
        return error(400, str(exc))
    return JsonResponse({"id": action.id})


@endpoint("GET")
def retrieve_bulk_action(request: HttpRequest, env: EnvContext, action_id: str) -> JsonResponse:
    action = bulk.retrieve(env, action_id)
    return JsonResponse(bulk.document(action)) if action else error(404, "Bulk action not found")


@endpoint("POST")
def abort_bulk_action(request: HttpRequest, env: EnvContext, action_id: str) -> JsonResponse:
    action = bulk.abort(env, action_id, now_ms=now_ms())
    return JsonResponse({"id": action.id}) if action else error(404, "Bulk action not found")
