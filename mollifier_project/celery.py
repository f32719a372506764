"""The Celery app: Redis broker, configuration from Django settings (``CELERY_*``), tasks autodiscovered."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import setup_logging, task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mollifier_project.settings")

app = Celery("mollifier_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect
def _use_django_logging(**kwargs: object) -> None:
    """Celery installs its own plain-text root handler unless this signal has a receiver: apply
    ``settings.LOGGING`` instead, so worker and beat write the same JSON lines as the web (level: LOG_LEVEL)."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)


@task_prerun.connect
@task_postrun.connect
def _keep_healthy_connections(task: object = None, **kwargs: object) -> None:
    """Around every task, what Django does around every request: drop a database connection that had an error,
    was left inside a transaction or is older than ``CONN_MAX_AGE``, and health-check a kept one before its next
    query. With ``CELERY_DB_REUSE_MAX`` set (settings) Celery's Django fix-up no longer closes the connection
    after each task, so a worker keeps its Postgres session between tasks (docs/operations.md#postgres): a
    drain task no longer opens one. Eager calls (tests) run inside the caller's transaction: left alone."""
    if getattr(getattr(task, "request", None), "is_eager", False):
        return
    from django.db import close_old_connections

    close_old_connections()
