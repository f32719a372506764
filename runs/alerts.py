"""Alerts for failed runs (docs/architecture.md#domain-model ``RunAlert``): one row per channel, delivered at most once per channel.

Every failed run gets a ``log`` alert (a structured log line an operator's log pipeline can route); an
env with ``alert_webhook_url`` also gets a JSON POST. A webhook that fails raises ``WebhookError`` so the
Celery task retries it with backoff; the unique (run, channel) constraint makes the retry safe.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

from django.db import IntegrityError, transaction

from runs.models import RunAlert, TaskRun

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 5


class WebhookError(Exception):
    """The env's webhook did not accept the alert; retried by the task."""


def _record(run: TaskRun, channel: str, detail: str) -> bool:
    """True if this call recorded the alert, False if it was already recorded (a retry)."""
    try:
        with transaction.atomic():
            RunAlert.objects.create(run=run, channel=channel, detail=detail)
    except IntegrityError:
        return False
    return True


def record_run_alert(run_id: str) -> int:
    """Record the alerts for ``run_id``. Returns how many alerts this call delivered."""
    run = TaskRun.objects.select_related("env", "org").filter(id=run_id).first()
    if run is None:
        log.warning("alert for unknown run %s dropped", run_id)
        return 0
    raw = (run.error or {}).get("raw", "")
    delivered = 0
    if _record(run, RunAlert.Channel.LOG, raw):
        log.error(
            "run failed",
            extra={"run_id": run.id, "env_id": run.env_id, "org_id": run.org_id, "status": run.status, "error": raw},
        )
        delivered += 1
    url = run.env.alert_webhook_url
    if url and not RunAlert.objects.filter(run=run, channel=RunAlert.Channel.WEBHOOK).exists():
        body = json.dumps(
            {"runId": run.id, "status": run.status, "taskIdentifier": run.task_identifier, "error": raw}
        ).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
                status = response.status
        except (urllib.error.URLError, OSError) as exc:
            raise WebhookError(f"webhook for run {run.id} failed: {exc}") from exc
        if _record(run, RunAlert.Channel.WEBHOOK, f"HTTP {status}"):
            delivered += 1
    return delivered
