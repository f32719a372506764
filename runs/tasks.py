"""Celery wiring for run alerts: thin; the work is in ``runs.alerts``."""

from __future__ import annotations

from celery import shared_task

from runs import alerts


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
