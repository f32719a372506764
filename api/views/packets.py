"""Packets: payloads too large to send inline, stored apart and triggered by path (docs/api.md#packets).
Presign an upload or a download, and serve the presigned URL itself. Parse, call ``runs.packets`` (or
``runs.queries`` for a run's stored payload), map the result to HTTP."""

from __future__ import annotations

from django.conf import settings
from django.http import FileResponse, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from api.http import HttpError, endpoint, error, packet_uri, request_buffer
from mollifier_project.clock import from_ms, now_ms
from runs import packets, queries
from runs.auth import EnvContext


def _packet_path(filename: str) -> str:
    if problem := packets.path_problem(filename):
        raise HttpError(400, f"filename: {problem}")
    return filename


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
    found = queries.retrieve(env, run_id, buffer=request_buffer(), now=from_ms(now_ms()))
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
