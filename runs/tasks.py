"""Celery wiring for run alerts and bulk actions: thin; the work is in ``runs.alerts`` and ``runs.bulk``.

The services never import this module (it would close a circle: ``runs.bulk`` → here → ``runs.bulk``). They
send hooks from ``runs.signals`` after their commit, and the receivers below, connected when
``RunsConfig.ready`` imports this module, queue the tasks (docs/architecture.md#layers).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.dispatch import receiver

from buffer.buffer import Buffer, BufferUnavailable
from mollifier_project.celery import send_bounded
from runs import alerts, bulk
from runs.models import BulkAction, TaskRun
from runs.signals import bulk_action_created, run_failure_committed

log = logging.getLogger(__name__)


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


@receiver(run_failure_committed, sender=TaskRun, dispatch_uid="runs.tasks.enqueue_run_alert")
def enqueue_run_alert(sender: type[TaskRun], *, run_id: str, **kwargs: Any) -> None:
    """Queue the alert of a SYSTEM_FAILURE row the engine just committed."""
    try:
        send_bounded(record_run_alert, (run_id,))  # a hung broker costs the committing process ~1 s
    except Exception:  # the broker is down: the row exists and says SYSTEM_FAILURE; the alert is lost, loudly
        log.exception("could not enqueue the alert for failed run %s", run_id)


@receiver(bulk_action_created, sender=BulkAction, dispatch_uid="runs.tasks.send_bulk_action")
def send_bulk_action(sender: type[BulkAction], *, action_id: str, **kwargs: Any) -> None:
    """Send the task of a bulk action ``runs.bulk.create`` just committed."""
    try:
        send_bounded(run_bulk_action, (action_id,))  # a hung broker costs the request ~1 s, not a worker
    except Exception:  # the broker is down: the action stays PENDING, loudly (docs/runbook.md#cancel-a-runaway-storm)
        log.exception("could not send the task of bulk action %s", action_id)
