"""``GET /metrics``: the Prometheus exposition (docs/operations.md#metrics-and-alerts). Thin: checks the
optional bearer token and hands over to ``telemetry.collector``."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from buffer.buffer import Buffer
from mollifier_project.clock import now_ms
from telemetry import collector


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    cfg = settings.MOLLIFIER
    token = cfg.METRICS_TOKEN.get_secret_value()
    if token and not _bearer_matches(request, token):
        response = HttpResponse("metrics need the bearer token (MOLLIFIER_METRICS_TOKEN)\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = collector.exposition(
        Buffer.from_settings("request"),
        now_ms=now_ms(),
        stale_threshold_s=cfg.STALE_THRESHOLD_S,
        sweep_enabled=cfg.STALE_SWEEP_ENABLED,
        multiproc_dir=settings.PROMETHEUS_MULTIPROC_DIR,
    )
    return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)  # what generate_latest writes


def _bearer_matches(request: HttpRequest, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())
