"""Shared fixtures: real Postgres (pytest-django's test database) and real Redis, isolated per test.

Each test that touches Redis gets its own key prefix (``MOLLIFIER_KEY_PREFIX``) and every key under it is
deleted afterwards, so tests never see each other's keys and can run in any order.
"""

from __future__ import annotations

import uuid

import pytest
import redis as redis_lib
from django.conf import settings as django_settings


@pytest.fixture
def mollifier_settings(settings):
    """Replace settings.MOLLIFIER with a copy carrying overrides: ``mollifier_settings(SHARDS=4)``."""

    def apply(**overrides):
        settings.MOLLIFIER = settings.MOLLIFIER.model_copy(update=overrides)
        return settings.MOLLIFIER

    return apply


@pytest.fixture
def redis_client():
    client = redis_lib.Redis.from_url(django_settings.REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def key_prefix(mollifier_settings, redis_client):
    """A fresh key prefix for this test; every key under it is removed afterwards."""
    prefix = f"mtest-{uuid.uuid4().hex[:12]}"
    mollifier_settings(KEY_PREFIX=prefix)
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def celery_eager():
    """Run Celery tasks inline (the code still goes through ``.delay``)."""
    from mollifier_project.celery import app

    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous
