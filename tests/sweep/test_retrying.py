"""Entries waiting out a retry (``B retry``, in no env queue) count as stale and get ``StuckEntry`` rows,
once per cycle, and leave the counts when they drain (docs/architecture.md#stale-sweep)."""

from __future__ import annotations

import pytest

from sweep.models import StuckEntry, StuckKind
from tests.sweep.conftest import THRESHOLD_MS, counts

pytestmark = pytest.mark.django_db

HOUR_MS = 3_600_000
OLD = 1_000
NOW = OLD + THRESHOLD_MS + 1  # OLD entries are stale; the retry backoff (an hour) is far from over


@pytest.fixture
def park_in_retry(buffer, park):
    """Accept entries at ``now_ms``, lease them and requeue them with an hour's backoff: they sit in ``retry``."""

    def run(org_id: int, env_id: int, *, now_ms: int = OLD, count: int = 1) -> list[str]:
        run_ids = park(org_id, env_id, now_ms=now_ms, count=count)
        leased = buffer.lease(0, org_id=org_id, env_id=env_id, n=count, now_ms=now_ms, lease_ms=60_000)
        assert sorted(e.run_id for e in leased) == sorted(run_ids)
        for run_id in run_ids:
            assert buffer.requeue(0, run_id, now_ms=now_ms, delay_ms=HOUR_MS, error="deadlock") == 1
        return run_ids

    return run


def drain(buffer, org_id: int, env_id: int) -> None:
    """The drainer comes back for an env's retrying entries: promote, lease and ack them."""
    buffer.promote_due(0, now_ms=OLD + HOUR_MS + 1, limit=1000)
    leased = buffer.lease(0, org_id=org_id, env_id=env_id, n=1000, now_ms=NOW, lease_ms=60_000)
    buffer.ack(0, [e.run_id for e in leased], now_ms=NOW, grace_ms=1)


def stale_gauge(buffer) -> int:
    return sum(s.stale for s in buffer.shard_stats(now_ms=NOW))


def test_entry_waiting_out_a_retry_is_counted_stale_and_gets_a_row(buffer, park_in_retry, sweep_pass):
    (run_id,) = park_in_retry(1, 11)
    assert buffer.orgs(0) == []  # in no queue: the org is in no org set, the env in no env set

    report = sweep_pass(NOW)

    assert report.counts == {11: 1}
    assert counts(buffer) == {11: 1}
    assert stale_gauge(buffer) == 1
    row = StuckEntry.objects.get(run_id=run_id)
    assert (row.kind, row.org_id, row.env_id, row.attempts, row.last_error) == (StuckKind.STALE, 1, 11, 1, "deadlock")
    assert buffer.shard_stats(now_ms=NOW)[0].oldest_accepted_ms == OLD


def test_retrying_entries_count_with_their_env_when_its_org_is_visited(buffer, park, park_in_retry, sweep_pass):
    park_in_retry(1, 11)
    park(1, 11, now_ms=OLD)  # env 11: one stale entry retrying, one queued
    park_in_retry(1, 12)  # env 12 of the same org: only retrying, so not in the org's env set
    park_in_retry(1, 13, now_ms=NOW - 5)  # retrying but fresh
    park(2, 21, now_ms=OLD)

    report = sweep_pass(NOW)

    assert report.counts == {11: 2, 12: 1, 21: 1}
    assert counts(buffer) == {11: 2, 12: 1, 21: 1}
    assert StuckEntry.objects.filter(kind=StuckKind.STALE).count() == 4


def test_a_later_pass_does_not_overwrite_a_count_with_its_retrying_part(buffer, park, park_in_retry, sweep_pass):
    park_in_retry(1, 11)
    park(1, 11, now_ms=OLD)
    park(2, 21, now_ms=OLD)

    first = sweep_pass(NOW, max_orgs=1)  # org 1: env 11 counted with its retrying entry
    end = sweep_pass(NOW, max_orgs=1)  # org 2, the wrap: env 11 was visited this cycle already

    assert (first.orgs, first.counts) == ([1], {11: 2})
    assert (end.orgs, end.wrapped, end.counts, end.evicted) == ([2], True, {21: 1}, [])
    assert counts(buffer) == {11: 2, 21: 1}


def test_retry_only_env_is_counted_once_per_cycle_and_evicted_when_it_drains(buffer, park, park_in_retry, sweep_pass):
    for org in (1, 2, 3):
        park(org, 10 * org + 1, now_ms=OLD)
    park_in_retry(1, 12)  # a retry-only env of an org in the cycle: counted with its org
    park_in_retry(9, 91, count=2)  # a retry-only org, in no org set: counted at the wrap

    cycle = [sweep_pass(NOW, max_orgs=2) for _ in range(2)]

    assert [(p.orgs, p.wrapped) for p in cycle] == [([1, 2], False), ([3], True)]
    assert [p.counts for p in cycle] == [{11: 1, 12: 1, 21: 1}, {31: 1, 91: 2}]
    assert counts(buffer) == {11: 1, 12: 1, 21: 1, 31: 1, 91: 2}
    assert stale_gauge(buffer) == 6

    again = [sweep_pass(NOW, max_orgs=2) for _ in range(2)]  # a second cycle counts the same, once each
    assert [p.counts for p in again] == [{11: 1, 12: 1, 21: 1}, {31: 1, 91: 2}]
    assert stale_gauge(buffer) == 6

    drain(buffer, 1, 12)
    drain(buffer, 9, 91)
    mid = sweep_pass(NOW, max_orgs=2)
    assert mid.counts == {11: 1, 21: 1}
    end = sweep_pass(NOW, max_orgs=2)
    assert (end.counts, end.wrapped, end.evicted) == ({31: 1}, True, [12, 91])
    assert counts(buffer) == {11: 1, 21: 1, 31: 1}
    assert stale_gauge(buffer) == 3
