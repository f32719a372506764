"""HTTP API for packets, reschedule, replay and metadata (docs/api.md#packets, #reschedule, #replay,
#metadata). Thin like ``api.http``'s views, whose ``endpoint`` decorator (auth, error mapping) they share: parse,
call a service (``runs.packets``, ``runs.mutations``, ``runs.replay``), map its result to HTTP."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import FileResponse, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from api.http import HttpError, _buffer, _json_body, _mutation_response, _request_key, endpoint, error, packet_uri
from mollifier_project.clock import from_ms, now_ms
from runs import mutations, packets, queries, replay
from runs.auth import EnvContext
from runs.durations import DurationError, parse_delay
from runs.locate import Where, locate
from runs.metadata import MetadataInvalid, MetadataTooLarge
from runs.schemas import MetadataBody, ReplayBody, RescheduleBody

BODY_LIMIT = 64 * 1024


def _packet_path(filename: str) -> str:
    if problem := packets.path_problem(filename):
        raise HttpError(400, f"filename: {problem}")
    return filename


def _has_body(request: HttpRequest) -> bool:
    length = request.META.get("CONTENT_LENGTH") or ""
    return (length.isdigit() and int(length) > 0) or bool(request.META.get("HTTP_TRANSFER_ENCODING"))


# ------------------------------------------------------------------------------------------ packets


@endpoint("PUT")
def create_upload_url(request: HttpRequest, env: EnvContext, filename: str) -> JsonResponse:
    """``PUT /api/v2/packets/<path>``: where to upload the packet, and the path to trigger with."""
    path = _packet_path(filename)
    url = packet_uri(request)(packets.object_url("put", env.env_id, path))
    return JsonResponse({"presignedUrl": url, "storagePath": path})


@endpoint("GET")
def get_download_url(request: HttpRequest, env: EnvContext, filename: str) -> JsonResponse:
    """``GET /api/v1/packets/<path>``: where to download one of this env's packets."""
    path = _packet_path(filename)
    if not packets.exists(env.env_id, path):
        return error(404, "Packet not found")
    return JsonResponse({"presignedUrl": packet_uri(request)(packets.object_url("get", env.env_id, path))})


@endpoint("GET")
def get_run_packet_url(request: HttpRequest, env: EnvContext, run_id: str, field: str) -> JsonResponse:
    """``GET /api/v1/runs/<id>/packets/<field>``: the stored payload of a run of this env (runs have no output here)."""
    if field != "payload":
        return error(404, f"Run has no stored {field}")
    found = queries.retrieve(env, run_id, buffer=_buffer(), now=from_ms(now_ms()))
    url = (found.doc or {}).get("payloadPresignedUrl")
    if not url:
        return error(404, "Run not found" if found.doc is None else "Run has no stored payload")
    return JsonResponse({"presignedUrl": packet_uri(request)(url)})


@csrf_exempt
def packet_object(request: HttpRequest, token: str) -> HttpResponseBase:
    """The presigned URL itself: ``PUT`` stores the body, ``GET`` answers it. The token is the authority
    (``runs.packets.verify``); no API key is sent to it."""
    if request.method not in ("PUT", "GET", "HEAD"):
        return error(405, f"Method {request.method} not allowed")
    cfg = settings.MOLLIFIER
    if not packets.served_here(request.get_host(), cfg.PACKET_ORIGIN):  # never on the app's host, its cookies
        return error(404, f"Packets are served from {cfg.PACKET_ORIGIN} only")
    try:
        grant = (
            packets.verify(token, op="put", max_age_s=cfg.PACKET_PUT_URL_TTL_S)
            if request.method == "PUT"
            else packets.verify(token, op="get", max_age_s=cfg.PACKET_URL_TTL_S)
        )
    except packets.PacketError as exc:
        return error(404, str(exc))
    if request.method == "PUT":
        length = request.META.get("CONTENT_LENGTH") or ""
        if length.isdigit() and int(length) > cfg.MAX_PACKET_BYTES:
            return error(413, f"Packet of {length} bytes exceeds the limit of {cfg.MAX_PACKET_BYTES} bytes")
        stream = request.META["wsgi.input"] if not length and request.META.get("wsgi.input_terminated") else request
        try:
            size = packets.store(grant, stream, content_type=request.content_type, limit=cfg.MAX_PACKET_BYTES)
        except packets.TooLarge as exc:
            return error(413, str(exc))
        except packets.AlreadyStored as exc:  # retrying cannot help: the SDK retries a 409 unless told not to
            return error(409, str(exc), {"x-should-retry": "false"})
        except packets.PacketError as exc:
            return error(500, str(exc))
        return JsonResponse({"size": size})
    opened = packets.open_packet(grant)
    if opened is None:
        return error(404, "Packet not found")
    body, content_type = opened
    name = grant.path.rsplit("/", 1)[-1]
    response = FileResponse(body, content_type=content_type, as_attachment=True, filename=name)
    for header, value in packets.DOWNLOAD_HEADERS.items():
        response[header] = value
    return response


# -------------------------------------------------------------------------------- reschedule, replay


@endpoint("POST")
def reschedule_run(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    body = _json_body(request, RescheduleBody, limit=BODY_LIMIT)
    clock = now_ms()
    try:
        delay_until = parse_delay(body.delay, now=from_ms(clock))
    except DurationError as exc:
        raise HttpError(400, f"delay: {exc}") from None
    if delay_until is None:
        raise HttpError(400, "delay: must be in the future")
    buffer = _buffer()
    result = mutations.reschedule(
        env, run_id, delay_until, buffer=buffer, now_ms=clock, wait_ms=settings.MOLLIFIER.MUTATE_WAIT_MS
    )
    if result.status == mutations.Status.NOT_DELAYED:
        return error(422, "Cannot reschedule a run that is not delayed")
    if result.status != mutations.Status.OK:
        return _mutation_response(run_id, result, {})
    found = queries.retrieve(env, run_id, buffer=buffer, now=from_ms(now_ms()))
    if found.doc is None:  # rescheduled, and materialised in between: the row is not visible yet
        return error(503, f"Run {run_id} is being created right now; retry in a moment.", {"x-should-retry": "true"})
    return JsonResponse(packets.absolute(found.doc, packet_uri(request)))


@endpoint("POST")
def replay_run(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    body = _json_body(request, ReplayBody, limit=_replay_limit()) if _has_body(request) else ReplayBody()
    try:
        result = replay.replay(
            env, run_id, body, buffer=_buffer(), cfg=settings.MOLLIFIER, now_ms=now_ms(),
            request_key=_request_key(request),
        )  # fmt: skip
    except replay.OriginalUnavailable:
        return error(503, f"Run {run_id} is being created right now; retry in a moment.", {"x-should-retry": "true"})
    if result is None:
        return error(404, "Run not found")
    return JsonResponse({"id": result.run_id})


def _replay_limit() -> int:
    return settings.MOLLIFIER.MAX_PAYLOAD_BYTES + 256 * 1024


# ------------------------------------------------------------------------------------------- metadata


@endpoint("PUT", "GET")
def run_metadata(request: HttpRequest, env: EnvContext, run_id: str) -> JsonResponse:
    buffer = _buffer()
    if request.method == "GET":
        current = mutations.read_metadata(env, run_id, buffer=buffer)
        return error(404, "Run not found") if current is None else JsonResponse({"metadata": current})
    cfg = settings.MOLLIFIER
    body = _json_body(request, MetadataBody, limit=cfg.MAX_METADATA_BYTES + BODY_LIMIT)
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
        return _mutation_response(run_id, result, {})
    _lineage_operations(env, run_id, body, buffer=buffer, limit=cfg.MAX_METADATA_BYTES)
    return JsonResponse({"metadata": result.metadata or {}})


def _lineage_operations(env: EnvContext, run_id: str, body: MetadataBody, *, buffer: Any, limit: int) -> None:
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
