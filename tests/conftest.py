"""Shared fixtures: real Postgres (pytest-django's test database) and real Redis, isolated per test.

Each test that touches Redis gets its own key prefix (``MOLLIFIER_KEY_PREFIX``) and every key under it is
deleted afterwards, so tests never see each other's keys and can run in any order.

On a Redis Cluster (``BUFFER_REDIS_URL=redis+cluster://…``, as ``make test-cluster`` sets it through
``scripts/redis_cluster.py``) the buffer's fixtures use the cluster: ``redis_client`` is a cluster client,
the cleanup scans and deletes on every master, and child processes inherit ``BUFFER_REDIS_URL`` with the
rest of the environment. Tests that need a single server of their own are skipped there, each with its
reason (``CLUSTER_SKIPS``, or a ``single_redis`` marker).
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from buffer.client import buffer_redis_url
from buffer.cluster import primaries
from mollifier_project.config import redis_location
from tests.redis_servers import buffer_redis_client

# Tests that cannot run on a cluster, by node id prefix: each points the buffer at a redis-server of its own
# (a replica, a server to kill or restart) through ``settings.REDIS_URL``, which BUFFER_REDIS_URL overrides.
CLUSTER_SKIPS = {
    "tests/buffer/test_durability.py": "starts its own primary and replica and points REDIS_URL at them",
    "tests/buffer/test_redis_crash.py": "uses a redis-server of its own, never the buffer's Redis: make test runs it",
    "tests/chaos/": "kills and restarts the buffer's single redis-server",
}


def on_cluster() -> bool:
    """Whether the buffer's Redis of this test run is a Redis Cluster."""
    return redis_location(buffer_redis_url()).cluster


def pytest_collection_modifyitems(config, items):
    if not on_cluster():
        return
    for item in items:
        reason = next((why for prefix, why in CLUSTER_SKIPS.items() if item.nodeid.startswith(prefix)), None)
        marker = item.get_closest_marker("single_redis")
        if marker is not None:
            reason = marker.args[0] if marker.args else "needs a single Redis server"
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"not on a Redis Cluster: {reason}"))


@pytest.fixture
def mollifier_settings(settings):
    """Replace settings.MOLLIFIER with a copy carrying overrides: ``mollifier_settings(SHARDS=4)``."""

    def apply(**overrides):
        settings.MOLLIFIER = settings.MOLLIFIER.model_copy(update=overrides)
        return settings.MOLLIFIER

    return apply


@pytest.fixture(scope="session")
def _cluster_client():
    """One cluster client for the session: each one made discovers the nodes, and redis-py's leaves a socket
    behind when closed (a ResourceWarning, an error under ``filterwarnings = error``)."""
    client = buffer_redis_client() if on_cluster() else None
    yield client
    if client is not None:
        client.close()


@pytest.fixture
def redis_client(_cluster_client):
    """The buffer's Redis (bytes replies), for tests that look at keys directly."""
    if _cluster_client is not None:
        yield _cluster_client
        return
    client = buffer_redis_client()
    yield client
    client.close()


@pytest.fixture
def key_prefix(mollifier_settings, redis_client):
    """A fresh key prefix for this test; every key under it is removed afterwards (from every master of a
    cluster: a scan of one node sees only its own slots)."""
    prefix = f"mtest-{uuid.uuid4().hex[:12]}"
    mollifier_settings(KEY_PREFIX=prefix)
    yield prefix
    for node in primaries(redis_client):
        pipe = node.pipeline(transaction=False)
        for key in node.scan_iter(match=f"{prefix}:*", count=1000):
            pipe.delete(key)  # one DEL per key: a multi-key DEL must not span slots
        pipe.execute()


@pytest.fixture
def celery_eager():
    """Run Celery tasks inline (the code still goes through ``.delay``)."""
    from mollifier_project.celery import app

    previous = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, True
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = previous


@pytest.fixture
def statements(monkeypatch):
    """A list that gets one item per statement sent to Postgres (any psycopg cursor: Django's, or the prepared
    lookup's, which Django's query counter does not see) while the test runs."""
    sent: list[str] = []
    original = psycopg.Cursor.execute

    def counting(self, query, *args, **kwargs):
        sent.append(str(query))
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    return sent
