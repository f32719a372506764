"""Celery wiring for run alerts and bulk actions: thin; the work is in ``runs.alerts`` and ``runs.bulk``."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from buffer.buffer import Buffer, BufferUnavailable
from runs import alerts, bulk


@shared_task(
    name="runs.record_run_alert",
    acks_late=True,
    autoretry_for=(alerts.WebhookError,),
    retry_backoff=True,
    retry_backoff_max=300,
    max_retries=8,
)
def record_run_alert(run_id: str) -> int:
    """Record (and, when the env has a webhook, deliver) the alert for a failed run."""
    return alerts.record_run_alert(run_id)


@shared_task(
    name="runs.run_bulk_action",
    acks_late=True,
    autoretry_for=(BufferUnavailable, OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=20,
)
def run_bulk_action(action_id: str) -> int:
    """Apply a bulk action's chunks for a while (``runs.bulk.execute``); send itself again if work is left,
    so a long action never holds a worker that also drains. Returns the chunks applied."""
    progress = bulk.execute(action_id, buffer=Buffer.from_settings())
    if not progress.finished and not progress.busy:
        run_bulk_action.delay(action_id)
    return progress.chunks
