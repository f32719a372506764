"""Fixtures of the hosts stage (``make test-hosts``, docs/operations.md#deploying-on-several-hosts): the test
runs under ``scripts/hosts.py run``, which built the hosts; each test gets a proxy of its own for its links,
and a Cluster whose processes run on the hosts. Outside that stage every test here is skipped, saying why."""

from __future__ import annotations

import os

import pytest

from buffer.buffer import Buffer
from scripts.netproxy import NetProxy
from tests.drainer.processes import settings_env
from tests.hosts.harness import HostCluster, Links, description

# The chaos suite's short timings (tests/chaos/conftest.py): a 1 s drain budget, 2.5 s leases.
HOST_SETTINGS = {
    "DRAINER_ENABLED": True,
    "DRAIN_TIME_BUDGET_MS": 1000,
    "LEASE_MS": 2500,
    "MUTATE_WAIT_MS": 500,
    "ACK_GRACE_S": 900,
    "SHARDS": 1,
}


def pytest_collection_modifyitems(config, items):
    if "HOSTS_TOPOLOGY" in os.environ:
        return
    why = os.environ.get("HOSTS_UNAVAILABLE") or "runs only under scripts/hosts.py run (make test-hosts)"
    for item in items:
        if item.nodeid.startswith("tests/hosts/"):
            item.add_marker(pytest.mark.skip(reason=f"hosts: {why}"))


@pytest.fixture
def links():
    with NetProxy() as proxy:
        yield Links(description(), proxy)


@pytest.fixture
def start_cluster(request, key_prefix, mollifier_settings, links, tmp_path):
    """``start_cluster(rtt_ms, **settings)`` → (HostCluster, Buffer); the processes are stopped afterwards and
    their logs printed if the test failed."""
    clusters: list[HostCluster] = []

    def start(rtt_ms: float = 0.0, **overrides: object) -> tuple[HostCluster, Buffer]:
        values = {**HOST_SETTINGS, **overrides}
        mollifier_settings(**values)
        links.set_rtt(rtt_ms)
        cluster = HostCluster(links, key_prefix=key_prefix, settings_env=settings_env(values), log_dir=tmp_path)
        clusters.append(cluster)
        return cluster, Buffer.from_settings()

    yield start
    for cluster in clusters:
        if getattr(request.node, "rep_call_failed", True):
            print(cluster.logs())
        cluster.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.rep_call_failed = report.failed
    return report
