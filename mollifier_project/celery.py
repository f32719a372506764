"""The Celery app: Redis broker, configuration from Django settings (``CELERY_*``), tasks autodiscovered."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task
from celery.signals import setup_logging

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mollifier_project.settings")

app = Celery("mollifier_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

SEND_TIMEOUT_S = 1.0
"""How long a bounded send (``send_bounded``) waits on the broker's socket, to connect and for each reply. A
publish to a healthy Redis takes milliseconds; a second leaves a loaded box room."""


def send_bounded(task: Task, args: tuple[Any, ...], **options: Any) -> None:
    """Send ``task`` (``apply_async``, so eager where Celery is set so) over a connection of its own whose socket
    waits at most ``SEND_TIMEOUT_S``, with no retry, and raise what the broker raised. The app's pooled
    connections wait with no socket timeout, so a hung broker (a SIGSTOPped Redis, a partition) held a web
    request's send until gunicorn killed the worker; this costs the request about a second
    (docs/operations.md#redis-timeouts-and-the-circuit-breaker). A connection per send: for rare sends only."""
    bounded = {
        "socket_timeout": SEND_TIMEOUT_S, "socket_connect_timeout": SEND_TIMEOUT_S,
        "max_retries": 0, "connect_retries_timeout": SEND_TIMEOUT_S,  # kombu's connection retries: none
    }  # fmt: skip
    with app.connection_for_write(transport_options=bounded) as connection:
        # celery-types' stub leaves out apply_async's **options, which Celery hands to send_task (connection=).
        task.apply_async(args, connection=connection, retry=False, **options)  # type: ignore[call-arg]


@setup_logging.connect
def _use_django_logging(**kwargs: object) -> None:
    """Celery installs its own plain-text root handler unless this signal has a receiver: apply
    ``settings.LOGGING`` instead, so worker and beat write the same JSON lines as the web (level: LOG_LEVEL)."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
