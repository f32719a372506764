"""``GET /metrics``: the Prometheus exposition (docs/operations.md#metrics-and-alerts). Thin: checks the
optional bearer token and hands over to ``telemetry.collector``."""

from __future__ import annotations

import hmac
import logging

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from buffer.buffer import Buffer
from drainer import epochs, heartbeat
from mollifier_project.clock import now_ms
from telemetry import collector

log = logging.getLogger(__name__)


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
        data_losses=_data_losses(),
        worker_stale_after_ms=heartbeat.stale_after_ms(cfg.DRAIN_TIME_BUDGET_MS),
    )
    return HttpResponse(body, content_type=CONTENT_TYPE_PLAIN_0_0_4)  # what generate_latest writes


def _data_losses() -> int | None:
    """Unacknowledged buffer data losses (one indexed count), or ``None`` when Postgres does not answer: the
    scrape still reports the buffer, and the Postgres outage has alerts of its own."""
    try:
        return epochs.unacknowledged_count()
    except DatabaseError:
        log.warning("metrics: Postgres unreachable, data-loss gauge left out", exc_info=True)
        return None


def _bearer_matches(request: HttpRequest, token: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())
