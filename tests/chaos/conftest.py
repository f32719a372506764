"""Fixtures of the chaos suite: a Cluster of real Celery processes (tests/drainer/processes.py) under the
test's key prefix, stopped afterwards pass or fail, with the process logs printed only when the test failed
(a crash loop leaves dozens of worker logs: printing them on success would bury the ``chaos:`` figures)."""

from __future__ import annotations

import pytest

from buffer.buffer import Buffer
from tests.drainer.processes import Cluster, settings_env

# Short timings, as in tests/drainer/test_processes.py, so that a crash costs seconds: a 1 s drain budget,
# 2.5 s leases (mollifier.E001 wants the lease above the budget) and so a 1.75 s shard lock (budget + half
# the gap to the lease: drainer.tasks.shard_lock_ms).
# ACK_GRACE_S keeps acked entries readable long enough for the assertions on their attempts.
CHAOS_SETTINGS = {
    "DRAINER_ENABLED": True,
    "DRAIN_TIME_BUDGET_MS": 1000,
    "LEASE_MS": 2500,
    "MUTATE_WAIT_MS": 500,
    "ACK_GRACE_S": 900,
}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.chaos_failed = report.failed
    return report


@pytest.fixture
def start_cluster(request, key_prefix, mollifier_settings, tmp_path):
    """``start_cluster(**settings)`` → (Cluster, Buffer): the same MOLLIFIER settings in this process and in
    every subprocess. ``settings.REDIS_URL`` at call time is the buffer's Redis of both (the broker stays on
    ``DRAIN_TEST_BROKER_URL``)."""
    clusters: list[Cluster] = []

    def start(**overrides: object) -> tuple[Cluster, Buffer]:
        values = {**CHAOS_SETTINGS, **overrides}
        mollifier_settings(**values)
        cluster = Cluster(key_prefix=key_prefix, settings_env=settings_env(values), log_dir=tmp_path)
        clusters.append(cluster)
        return cluster, Buffer.from_settings()

    yield start
    for cluster in clusters:
        if getattr(request.node, "chaos_failed", True):
            print(cluster.logs())
        cluster.stop()
