"""Mollifier's Django project: configuration only (settings, URLs, WSGI, Celery app, system checks)."""

from mollifier_project.celery import app as celery_app

__all__ = ("celery_app",)
