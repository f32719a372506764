"""An entry whose write timed out on a lock (or a statement timeout) must not come back to the head of its queue
and hold up the entries behind it (docs/architecture.md#drain-outcomes).

The shard task itself (``drainer.tasks.drain_shard``, with its statement and lock bounds), real Redis, real
Postgres. A ``RowLock`` — an uncommitted INSERT of the head's run id from a second session, as a frozen drainer's
transaction would hold it — makes every write of the head wait until the task's lock timeout (the smaller of
5 s and a quarter of the lease: 250 ms here). The head was reclaimed (its last lease expired), so it is solo:
a round stops before it and leases it alone.
"""

from __future__ import annotations

import time

import pytest

from drainer import tasks
from runs.models import TaskRun
from tests.drainer.processes import RowLock
from tests.factories import EnvironmentFactory, SnapshotFactory

LEASE_MS = 1_000  # statement timeout: 500 ms


@pytest.mark.django_db(transaction=True)
def test_a_head_that_timed_out_goes_behind_the_rest_of_its_queue(buffer, park, mollifier_settings):
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True, LEASE_MS=LEASE_MS, DRAIN_TIME_BUDGET_MS=200, MAX_ATTEMPTS=10)
    env = EnvironmentFactory()
    head, *rest = [SnapshotFactory(env=env) for _ in range(6)]
    park(head, *rest)
    stale = time.time_ns() // 1_000_000 - 10_000
    (leased,) = buffer.lease_round(0, [(env.org_id, env.id, 1)], now_ms=stale, lease_ms=1, max_bytes=0).entries
    assert leased.run_id == head.id  # a lease long expired: the next drain reclaims it, solo, to the queue head

    hold = RowLock(head.id, env.id, env.org_id)
    try:
        first = tasks.drain_shard(0)  # the head is leased alone and times out on the lock
        assert first is not None and first.get("requeued") == 1, first
        assert TaskRun.objects.filter(id__in=[s.id for s in rest]).count() == 0  # it stood in their way
        entry = buffer.get(head.id, org_id=env.org_id)
        assert "canceling statement due to lock timeout" in (entry.last_error or ""), entry.last_error
        time.sleep(1.2)  # the head's backoff (500 ms × 2^attempts, attempts 1) is over: it is due again

        second = tasks.drain_shard(0)
        written = TaskRun.objects.filter(id__in=[s.id for s in rest]).count()
    finally:
        hold.release()
    print(f"\ntimed-out head: {written}/{len(rest)} entries behind it written by the next shard task ({second})")
    assert written == len(rest)
    assert not TaskRun.objects.filter(id=head.id).exists()

    third = tasks.drain_shard(0)  # the lock is gone: the head is written too (once its backoff is over)
    deadline = time.monotonic() + 10
    while not TaskRun.objects.filter(id=head.id).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
        third = tasks.drain_shard(0)
    assert TaskRun.objects.filter(id=head.id).count() == 1, third


@pytest.mark.django_db(transaction=True)
def test_a_round_whose_bulk_write_waits_on_one_locked_row_still_writes_the_others(buffer, park, mollifier_settings):
    """The round is one COPY in one transaction: one row another session holds made the whole round wait and
    time out, and every round-mate was requeued with an attempt spent. Only the held entry may pay for it."""
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True, LEASE_MS=LEASE_MS, DRAIN_TIME_BUDGET_MS=200, MAX_ATTEMPTS=10)
    env = EnvironmentFactory()
    snaps = [SnapshotFactory(env=env) for _ in range(20)]
    park(*snaps)
    held = snaps[10]
    others = [s.id for s in snaps if s is not held]

    hold = RowLock(held.id, env.id, env.org_id)
    try:
        report = tasks.drain_shard(0)
        written = TaskRun.objects.filter(id__in=others).count()
    finally:
        hold.release()
    print(f"\nround with one locked row: {written}/{len(others)} round-mates written ({report})")
    assert written == len(others)
    assert {buffer.get(run_id, org_id=env.org_id).status for run_id in others} == {"ACKED"}
    entry = buffer.get(held.id, org_id=env.org_id)
    assert (entry.status, entry.attempts) == ("QUEUED", 1), entry
    assert not TaskRun.objects.filter(id=held.id).exists()
