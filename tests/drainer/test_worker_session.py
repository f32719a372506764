"""A drain worker keeps its Postgres session between tasks, safely (docs/operations.md#postgres).

Celery's Django fix-up used to close every connection before and after each task, so every drain task —
a kicked quiet drain of one run included — paid for a new Postgres session (a backend started, its caches
cold, the drain's staging table created again). Now the session is kept: Django's own hygiene
(``close_old_connections``: a connection with errors, an open transaction or past ``CONN_MAX_AGE`` is
dropped; a kept one is health-checked before its first query) runs around every task instead. What a task
changes in its session — the drain's statement, lock and idle timeouts — it resets at its end, and the next
task sets its own.

Real ``celery worker`` processes against the test database; the worker reports, per task, the backend pid
and the timeouts it saw (tests/drainer/worker_app.py, ``DRAINTEST_SESSION``).
"""

from __future__ import annotations

import pytest

from runs.models import TaskRun
from tests.drainer.processes import Outage, backend_alive, wait_until
from tests.drainer.test_processes import assert_one_live_row_each, entry_states, park
from tests.drainer.test_processes import start_cluster as start_cluster  # the process tests' fixture
from tests.factories import EnvironmentFactory, SnapshotFactory

# BASE_SETTINGS of test_processes: LEASE_MS 2500, so a drain task bounds its statements and its idle time
# in a transaction to half the lease and its lock waits to a quarter of it (drainer.tasks.drain_shard).
BOUNDED = {"statement_timeout": "1250ms", "lock_timeout": "625ms", "idle_timeout": "1250ms"}
UNBOUNDED = {"statement_timeout": "0", "lock_timeout": "0", "idle_timeout": "0"}


def drain_one_task(cluster, buffer, env, reports: int) -> list[str]:
    """Park 3 runs, send one ``drain_shard(0)``, wait for its report (the ``reports``-th)."""
    ids = park(buffer, [SnapshotFactory(env=env) for _ in range(3)])
    cluster.send_drain(0)
    wait_until(lambda: len(cluster.drain_reports()) >= reports, timeout=20, what=f"drain task {reports}")
    return ids


def timeouts(session: dict) -> dict[str, str]:
    return {k: v for k, v in session.items() if k != "pid"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("pool", ["solo", "prefork"])
def test_a_worker_keeps_its_postgres_session_between_drain_tasks_and_bounds_it_per_task(start_cluster, pool):
    cluster, buffer = start_cluster(SHARDS=1)
    env = EnvironmentFactory()
    worker = cluster.start_worker("w1", pool=pool, session=True)
    cluster.wait_ready(worker)

    ids = [run for n in (1, 2, 3) for run in drain_one_task(cluster, buffer, env, n)]

    reports = cluster.drain_reports()
    assert [r["retval"]["created"] for r in reports] == [3, 3, 3], reports
    pids = [r["session"]["pid"] for r in reports]
    print(f"\nworker session ({pool} pool): backend pids of three drain tasks {pids}")
    # Before: one new backend per task (three distinct pids); after: the same session all along.
    assert len(set(pids)) == 1, pids
    assert all(r["session_at_start"]["pid"] == pids[0] for r in reports)
    for r in reports:  # each task bounds its session for itself and leaves it as it found it
        assert timeouts(r["session"]) == BOUNDED, r["session"]
        assert timeouts(r["session_at_start"]) == UNBOUNDED, r["session_at_start"]
    assert TaskRun.objects.filter(id__in=ids).count() == 9
    assert_one_live_row_each(ids)


@pytest.mark.django_db(transaction=True)
def test_a_kept_session_that_died_between_tasks_is_replaced_before_the_next_drain_writes(start_cluster):
    """A Postgres restart (or an idle-session kill) between tasks: the next task's health check finds the
    kept session dead and opens a new one before the drain's first statement, so that drain bounds its new
    session, writes its rows and costs its entries no attempt and no outage."""
    cluster, buffer = start_cluster(SHARDS=1)
    env = EnvironmentFactory()
    worker = cluster.start_worker("w1", session=True)
    cluster.wait_ready(worker)
    first = drain_one_task(cluster, buffer, env, 1)
    dead_pid = cluster.drain_reports()[0]["session"]["pid"]

    outage = Outage()  # terminates the test database's other sessions: the worker's idle one
    try:
        assert outage.cut() >= 1
    finally:
        outage.close()
    wait_until(lambda: not backend_alive(dead_pid), timeout=5, what="the worker's session to be gone")
    snaps = [SnapshotFactory(env=env) for _ in range(3)]
    second = park(buffer, snaps)
    cluster.send_drain(0)
    wait_until(lambda: len(cluster.drain_reports()) >= 2, timeout=20, what="the second drain task")

    report = cluster.drain_reports()[1]
    assert report["session"]["pid"] != dead_pid
    assert timeouts(report["session"]) == BOUNDED
    assert report["retval"]["created"] == 3 and not report["retval"].get("outage"), report["retval"]
    assert {state for state in entry_states(buffer, snaps).values()} == {("ACKED", 0)}
    assert_one_live_row_each(first + second)
