"""A run's metadata (docs/api.md#metadata): read it, replace it or apply operations to it, and pass
``parentOperations`` / ``rootOperations`` on to the run's parent and root. Parse, call ``runs.mutations``, map
the result to HTTP."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from api.http import SMALL_BODY_BYTES, endpoint, error, json_body, mutation_response, request_buffer
from buffer.buffer import Buffer
from mollifier_project.clock import now_ms
from runs import mutations
from runs.auth import EnvContext
from runs.locate import Where, locate
from runs.metadata import MetadataInvalid, MetadataTooLarge
from runs.schemas import MetadataBody


@endpoint("PUT", "GET")
def run_metadata(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    buffer = request_buffer()
    if request.method == "GET":
        current = mutations.read_metadata(env, run_id, buffer=buffer)
        return error(404, "Run not found") if current is None else JsonResponse({"metadata": current})
    cfg = settings.MOLLIFIER
    body = json_body(request, MetadataBody, limit=cfg.MAX_METADATA_BYTES + SMALL_BODY_BYTES)
    try:
        result = mutations.update_metadata(
            env, run_id, replace=body.metadata, operations=body.operations or [], buffer=buffer, now_ms=now_ms(),
            wait_ms=cfg.MUTATE_WAIT_MS, limit=cfg.MAX_METADATA_BYTES,
        )  # fmt: skip
    except MetadataTooLarge as exc:
        return error(413, str(exc))
    except MetadataInvalid as exc:
        return error(422, str(exc))
    if result.status != mutations.Status.OK:
        return mutation_response(run_id, result, {})
    _lineage_operations(env, run_id, body, buffer=buffer, limit=cfg.MAX_METADATA_BYTES)
    return JsonResponse({"metadata": result.metadata or {}})


def _lineage_operations(env: EnvContext, run_id: str, body: MetadataBody, *, buffer: Buffer, limit: int) -> None:
    """``parentOperations`` / ``rootOperations`` go to the run's parent / root, when it has one in this env.
    Best effort, as for the SDK: the run's own update has landed and is answered either way."""
    if not (body.parentOperations or body.rootOperations):
        return
    parent, root = mutations.lineage(env, run_id, buffer=buffer)
    for target, ops in ((parent, body.parentOperations), (root, body.rootOperations)):
        if target and ops and locate(env, target, buffer=buffer, snapshot=False).where is not Where.NOWHERE:
            try:
                mutations.update_metadata(
                    env, target, replace=None, operations=ops, buffer=buffer, now_ms=now_ms(),
                    wait_ms=settings.MOLLIFIER.MUTATE_WAIT_MS, limit=limit,
                )  # fmt: skip
            except (MetadataTooLarge, MetadataInvalid):
                pass  # the parent's own limit; its run's update stands
