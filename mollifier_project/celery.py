"""The Celery app: Redis broker, configuration from Django settings (``CELERY_*``), tasks autodiscovered."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import setup_logging

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
