"""One run, or a page of runs (docs/api.md#retrieve-a-run, #list-runs, #cancel-a-run, #add-tags,
#reschedule-a-run, #replay-a-run), wherever it is: a row, or an entry still in the buffer. Parse, call
``runs.queries``, ``runs.mutations`` or ``runs.replay``, map the result to HTTP."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, JsonResponse

from api.http import (
    SMALL_BODY_BYTES,
    HttpError,
    being_created,
    endpoint,
    error,
    has_body,
    json_body,
    mutation_response,
    packet_uri,
    payload_body_bytes,
    request_buffer,
    request_key,
)
from mollifier_project.clock import from_ms, now_ms
from runs import mutations, packets, queries, replay
from runs.auth import EnvContext
from runs.durations import DurationError, parse_delay
from runs.schemas import ReplayBody, RescheduleBody, TagsBody


@endpoint("GET")
def retrieve_run(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    found = queries.retrieve(env, run_id, buffer=request_buffer(), now=from_ms(now_ms()))
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


@endpoint("POST")
def cancel_run(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    result = mutations.cancel(
        env, run_id, buffer=request_buffer(), now_ms=now_ms(), wait_ms=settings.MOLLIFIER.MUTATE_WAIT_MS
    )
    return mutation_response(run_id, result, {"id": run_id})


@endpoint("POST")
def add_tags(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    body = json_body(request, TagsBody, limit=SMALL_BODY_BYTES)
    tags = list(dict.fromkeys(body.tags))
    if len(tags) > 10:
        return error(422, f"Runs can only have 10 tags, you're trying to set {len(tags)}.")
    result = mutations.add_tags(
        env, run_id, tags, buffer=request_buffer(), now_ms=now_ms(), wait_ms=settings.MOLLIFIER.MUTATE_WAIT_MS
    )
    return mutation_response(run_id, result, {"message": f"Successfully set {result.count} new tags."})


@endpoint("POST")
def reschedule_run(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    body = json_body(request, RescheduleBody, limit=SMALL_BODY_BYTES)
    clock = now_ms()
    try:
        delay_until = parse_delay(body.delay, now=from_ms(clock))
    except DurationError as exc:
        raise HttpError(400, f"delay: {exc}") from None
    if delay_until is None:
        raise HttpError(400, "delay: must be in the future")
    buffer = request_buffer()
    result = mutations.reschedule(
        env, run_id, delay_until, buffer=buffer, now_ms=clock, wait_ms=settings.MOLLIFIER.MUTATE_WAIT_MS
    )
    if result.status == mutations.Status.NOT_DELAYED:
        return error(422, "Cannot reschedule a run that is not delayed")
    if result.status != mutations.Status.OK:
        return mutation_response(run_id, result, {})
    found = queries.retrieve(env, run_id, buffer=buffer, now=from_ms(now_ms()))
    if found.doc is None:  # rescheduled, and materialised in between: the row is not visible yet
        return being_created(run_id)
    return JsonResponse(packets.absolute(found.doc, packet_uri(request)))


@endpoint("POST")
def replay_run(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    limit = payload_body_bytes(settings.MOLLIFIER.MAX_PAYLOAD_BYTES)
    body = json_body(request, ReplayBody, limit=limit) if has_body(request) else ReplayBody()
    try:
        result = replay.replay(
            env, run_id, body, buffer=request_buffer(), cfg=settings.MOLLIFIER, now_ms=now_ms(),
            request_key=request_key(request),
        )  # fmt: skip
    except replay.OriginalUnavailable:
        return being_created(run_id)
    if result is None:
        return error(404, "Run not found")
    return JsonResponse({"id": result.run_id})
