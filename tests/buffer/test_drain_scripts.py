"""lease, ack, requeue, promote_due, reclaim_expired, release, dead_letter and the shard helpers."""

from __future__ import annotations

import threading

import pytest

from buffer.buffer import Buffer
from buffer.client import CLIENT_OPTIONS
from buffer.keys import shard_for
from buffer.values import EntryStatus
from tests.buffer.invariants import assert_consistent

# Orgs 1, 3 and 8 share shard 3 of 4; org 2 is in shard 1.
ORG, ORG_B, ORG_OTHER_SHARD = 1, 3, 2
SHARD = 3
ENV, ENV_2 = 10, 11
LEASE_MS = 30_000


def lease(buffer, *, env_id=ENV, org_id=ORG, n=10, now_ms=2_000, lease_ms=LEASE_MS):
    return buffer.lease(buffer.shard_for(org_id), org_id=org_id, env_id=env_id, n=n, now_ms=now_ms, lease_ms=lease_ms)


def ids(entries):
    return [entry.run_id for entry in entries]


def test_shard_layout_of_the_test_orgs():
    assert [shard_for(org, 4) for org in (ORG, ORG_B, ORG_OTHER_SHARD)] == [SHARD, SHARD, 1]


def test_lease_pops_fifo_and_marks_entries_leased(buffer, put):
    runs = put(ORG, ENV, count=5)

    first = lease(buffer, n=3, now_ms=2_000)
    second = lease(buffer, n=3, now_ms=2_500)

    assert ids(first) == runs[:3]
    assert ids(second) == runs[3:]
    assert all(e.status is EntryStatus.LEASED and e.lease_until_ms == 2_000 + LEASE_MS for e in first)
    leases = buffer._client.zrange(buffer.keys(SHARD).leases, 0, -1, withscores=True)
    assert dict(leases) == {**dict.fromkeys(runs[:3], 32_000.0), **dict.fromkeys(runs[3:], 32_500.0)}
    assert_consistent(buffer)


def test_lease_of_an_empty_env_returns_nothing(buffer):
    assert lease(buffer) == []
    assert_consistent(buffer)


def test_lease_prunes_env_then_org_from_the_sets_as_queues_empty(buffer, put):
    put(ORG, ENV, count=2)
    put(ORG, ENV_2)
    put(ORG_B, ENV + 100)

    lease(buffer, n=1)
    assert buffer.envs(SHARD, ORG) == [ENV, ENV_2]  # ENV still has one queued
    assert_consistent(buffer)
    lease(buffer, n=1)
    assert buffer.envs(SHARD, ORG) == [ENV_2]
    assert buffer.orgs(SHARD) == [ORG, ORG_B]
    assert_consistent(buffer)
    lease(buffer, env_id=ENV_2)
    assert buffer.envs(SHARD, ORG) == []
    assert buffer.orgs(SHARD) == [ORG_B]
    assert_consistent(buffer)


def test_lease_refuses_an_org_of_another_shard(buffer):
    with pytest.raises(ValueError, match="belongs to shard"):
        buffer.lease(SHARD, org_id=ORG_OTHER_SHARD, env_id=ENV, n=1, now_ms=0, lease_ms=1)


def test_parallel_leases_on_separate_connections_get_disjoint_entries(buffer, put):
    from tests.redis_servers import buffer_redis_client

    runs = put(ORG, ENV, count=300)
    clients = [buffer_redis_client(**CLIENT_OPTIONS) for _ in range(2)]
    drainers = [Buffer(client, prefix=buffer.prefix, shards=buffer.shards) for client in clients]
    got: list[list[str]] = [[], []]
    start = threading.Barrier(2)

    def drain(i: int) -> None:
        start.wait()
        while batch := drainers[i].lease(SHARD, org_id=ORG, env_id=ENV, n=7, now_ms=2_000, lease_ms=LEASE_MS):
            got[i].extend(ids(batch))

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    for client in clients:
        client.close()

    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(runs)
    # Each drainer saw its share in FIFO order.
    assert all(part == sorted(part, key=runs.index) for part in got)
    assert_consistent(buffer)


def test_ack_keeps_the_hash_as_acked_with_the_grace_ttl(buffer, put):
    run_id = put(ORG, ENV)
    lease(buffer)

    assert buffer.ack(SHARD, [run_id], now_ms=3_000, grace_ms=30_000).count == 1

    entry = buffer.get(run_id, org_id=ORG)
    assert entry.status is EntryStatus.ACKED
    assert entry.materialised
    assert entry.lease_until_ms is None
    assert 0 < buffer._client.pttl(buffer.keys(SHARD).entry(run_id)) <= 30_000
    assert buffer._client.zcard(buffer.keys(SHARD).leases) == 0
    assert_consistent(buffer)


def test_ack_twice_or_of_unknown_ids_counts_nothing(buffer, put):
    run_id = put(ORG, ENV)
    lease(buffer)
    buffer.ack(SHARD, [run_id], now_ms=3_000, grace_ms=30_000)

    assert buffer.ack(SHARD, [run_id, "run_unknown"], now_ms=3_100, grace_ms=30_000).count == 0
    assert buffer.ack(SHARD, [], now_ms=3_100, grace_ms=30_000).count == 0
    assert_consistent(buffer)


def test_ack_with_zero_grace_deletes_the_entry(buffer, put):
    run_id = put(ORG, ENV)
    lease(buffer)

    assert buffer.ack(SHARD, [run_id], now_ms=3_000, grace_ms=0).count == 1
    assert buffer.get(run_id, org_id=ORG) is None


def test_ack_after_a_reclaim_raced_the_drain_takes_the_entry_out_of_retry_and_queue(buffer, put):
    runs = put(ORG, ENV, count=2)
    lease(buffer, now_ms=0, lease_ms=1_000)
    buffer.reclaim_expired(SHARD, now_ms=1_000, limit=10)  # both back in retry
    buffer.promote_due(SHARD, now_ms=1_000, limit=1)  # one goes back to the queue, one still waits
    assert buffer.depth(SHARD, ENV) == 1
    assert buffer._client.zcard(buffer.keys(SHARD).retry) == 1
    assert_consistent(buffer)

    # The original drainer committed after all: its ack must take both out of the buffer.
    assert buffer.ack(SHARD, runs, now_ms=1_500, grace_ms=30_000).count == 2

    assert buffer.depth(SHARD, ENV) == 0
    assert buffer._client.zcard(buffer.keys(SHARD).retry) == 0
    assert buffer.orgs(SHARD) == []
    assert_consistent(buffer)


def test_requeued_entry_waits_in_retry_until_due_then_goes_to_the_queue_head(buffer, put):
    first, second, third = put(ORG, ENV, count=3)
    lease(buffer, n=1, now_ms=0)  # first is leased

    assert buffer.requeue(SHARD, first, now_ms=100, delay_ms=500, error="deadlock detected") == 1
    entry = buffer.get(first, org_id=ORG)
    assert (entry.status, entry.attempts, entry.last_error) == (EntryStatus.QUEUED, 1, "deadlock detected")
    assert_consistent(buffer)

    assert buffer.promote_due(SHARD, now_ms=599, limit=10) == 0
    assert ids(lease(buffer, n=1, now_ms=599)) == [second]  # not due yet: the queue goes on without it
    assert_consistent(buffer)

    assert buffer.promote_due(SHARD, now_ms=600, limit=10) == 1
    assert_consistent(buffer)
    assert ids(lease(buffer, n=5, now_ms=700)) == [first, third]


def test_retry_waiting_entry_of_an_otherwise_empty_env_rejoins_the_sets_when_promoted(buffer, put):
    run_id = put(ORG, ENV)
    lease(buffer, now_ms=0)
    buffer.requeue(SHARD, run_id, now_ms=0, delay_ms=100, error="lock timeout")
    assert buffer.orgs(SHARD) == []  # waiting out the backoff: nothing to drain yet
    assert buffer.shard_has_work([SHARD]) == [True]  # but the drainer must come back to promote it

    buffer.promote_due(SHARD, now_ms=100, limit=10)

    assert buffer.orgs(SHARD) == [ORG]
    assert buffer.envs(SHARD, ORG) == [ENV]
    assert_consistent(buffer)


def test_promote_due_keeps_due_order_and_respects_the_limit(buffer, put):
    a, b, c = put(ORG, ENV, count=3)
    lease(buffer, now_ms=0)
    buffer.requeue(SHARD, c, now_ms=0, delay_ms=10, error="e")
    buffer.requeue(SHARD, a, now_ms=0, delay_ms=20, error="e")
    buffer.requeue(SHARD, b, now_ms=0, delay_ms=30, error="e")

    assert buffer.promote_due(SHARD, now_ms=100, limit=2) == 2
    assert buffer._client.lrange(buffer.keys(SHARD).queue(ENV), 0, -1) == [c, a]
    assert buffer.promote_due(SHARD, now_ms=100, limit=2) == 1
    assert buffer._client.lrange(buffer.keys(SHARD).queue(ENV), 0, -1) == [b, c, a]
    assert_consistent(buffer)


def test_entries_requeued_to_the_tail_go_behind_the_queue_in_due_order_once_each(buffer, put):
    """A write that timed out (``to_tail``) must not hold up its queue again: promoted behind everything
    queued, earliest due first, while ordinary retries still go to the head; each id lands exactly once."""
    a, b, c, d, e = put(ORG, ENV, count=5)
    lease(buffer, n=3, now_ms=0)  # a, b, c
    buffer.requeue(SHARD, a, now_ms=0, delay_ms=10, error="lock timeout", to_tail=True)
    buffer.requeue(SHARD, b, now_ms=0, delay_ms=20, error="deadlock detected")
    buffer.requeue(SHARD, c, now_ms=0, delay_ms=30, error="statement timeout", to_tail=True)

    assert buffer.promote_due(SHARD, now_ms=100, limit=10) == 3
    assert buffer._client.lrange(buffer.keys(SHARD).queue(ENV), 0, -1) == [b, d, e, a, c]
    assert_consistent(buffer)
    assert buffer.get(a, org_id=ORG).attempts == 1
    # The mark is spent: a later ordinary retry of the same entry goes to the head again.
    assert ids(lease(buffer, n=5, now_ms=200)) == [b, d, e, a, c]
    buffer.requeue(SHARD, a, now_ms=200, delay_ms=0, error="deadlock detected")
    assert buffer.promote_due(SHARD, now_ms=200, limit=10) == 1
    assert buffer._client.lrange(buffer.keys(SHARD).queue(ENV), 0, -1) == [a]
    assert_consistent(buffer)


def test_requeue_of_a_run_that_is_not_leased_changes_nothing(buffer, put):
    run_id = put(ORG, ENV)

    assert buffer.requeue(SHARD, run_id, now_ms=0, delay_ms=10, error="e") is None
    assert buffer.get(run_id, org_id=ORG).attempts == 0
    assert_consistent(buffer)


def test_reclaim_expired_takes_only_expired_leases_and_counts_the_attempt(buffer, put):
    early, late = put(ORG, ENV, count=2)
    lease(buffer, n=1, now_ms=0, lease_ms=1_000)  # early: deadline 1000
    lease(buffer, n=1, now_ms=500, lease_ms=1_000)  # late: deadline 1500

    assert buffer.reclaim_expired(SHARD, now_ms=999, limit=10) == []
    assert buffer.reclaim_expired(SHARD, now_ms=1_000, limit=10) == [(early, 1)]
    assert_consistent(buffer)

    entry = buffer.get(early, org_id=ORG)
    assert (entry.status, entry.last_error, entry.lease_until_ms) == (EntryStatus.QUEUED, "lease expired", None)
    assert buffer.get(late, org_id=ORG).status is EntryStatus.LEASED
    # Due at once: the next promote puts it back at the head.
    assert buffer.promote_due(SHARD, now_ms=1_000, limit=10) == 1
    assert ids(lease(buffer, now_ms=1_000)) == [early]
    assert_consistent(buffer)


def test_reclaim_expired_respects_the_limit_earliest_deadline_first(buffer, put):
    runs = put(ORG, ENV, count=3)
    for i in range(3):
        lease(buffer, n=1, now_ms=i * 10, lease_ms=100)

    assert buffer.reclaim_expired(SHARD, now_ms=1_000, limit=2) == [(runs[0], 1), (runs[1], 1)]
    assert buffer.reclaim_expired(SHARD, now_ms=1_000, limit=2) == [(runs[2], 1)]


def test_release_returns_leased_entries_to_the_head_in_order_with_attempts_unchanged(buffer, put):
    a, b, c, d = put(ORG, ENV, count=4)
    other_env = put(ORG, ENV_2)
    leased = lease(buffer, n=3, now_ms=0) + lease(buffer, env_id=ENV_2, now_ms=0)
    put_later = put(ORG, ENV)
    assert_consistent(buffer)

    assert buffer.release(SHARD, ids(leased)) == 4

    assert buffer._client.lrange(buffer.keys(SHARD).queue(ENV), 0, -1) == [a, b, c, d, put_later]
    assert buffer._client.lrange(buffer.keys(SHARD).queue(ENV_2), 0, -1) == [other_env]
    assert all(buffer.get(run, org_id=ORG).attempts == 0 for run in (a, b, c, other_env))
    assert buffer._client.zcard(buffer.keys(SHARD).leases) == 0
    assert buffer.envs(SHARD, ORG) == [ENV, ENV_2]
    assert_consistent(buffer)


def test_release_ignores_runs_that_are_not_leased(buffer, put):
    run_id = put(ORG, ENV)

    assert buffer.release(SHARD, [run_id, "run_unknown"]) == 0
    assert buffer.release(SHARD, []) == 0
    assert buffer.depth(SHARD, ENV) == 1
    assert_consistent(buffer)


@pytest.mark.parametrize("state", ["leased", "queued", "waiting_to_retry"])
def test_dead_letter_parks_the_entry_for_operators_without_ttl(buffer, put, state):
    run_id = put(ORG, ENV)
    if state != "queued":
        lease(buffer, now_ms=0)
    if state == "waiting_to_retry":
        buffer.requeue(SHARD, run_id, now_ms=0, delay_ms=100, error="e")

    assert buffer.dead_letter(SHARD, run_id, now_ms=5_000, reason="environment deleted") is True

    entry = buffer.get(run_id, org_id=ORG)
    assert (entry.status, entry.last_error) == (EntryStatus.DEAD, "environment deleted")
    assert buffer._client.zscore(buffer.keys(SHARD).dead, run_id) == 5_000
    assert buffer.orgs(SHARD) == []
    assert_consistent(buffer)
    # Dead entries are not leased again and dead-lettering twice is a no-op.
    assert lease(buffer) == []
    assert buffer.promote_due(SHARD, now_ms=10_000, limit=10) == 0
    assert buffer.dead_letter(SHARD, run_id, now_ms=6_000, reason="again") is False


def test_dead_letter_of_an_acked_or_unknown_run_is_refused(buffer, put):
    run_id = put(ORG, ENV)
    lease(buffer)
    buffer.ack(SHARD, [run_id], now_ms=3_000, grace_ms=30_000)

    assert buffer.dead_letter(SHARD, run_id, now_ms=4_000, reason="late") is False
    assert buffer.dead_letter(SHARD, "run_unknown", now_ms=4_000, reason="x") is False
    assert buffer.get(run_id, org_id=ORG).status is EntryStatus.ACKED
    assert_consistent(buffer)


def test_shard_has_work_reports_queued_retrying_and_leased_shards(buffer, put):
    assert buffer.shard_has_work() == [False] * 4
    put(ORG, ENV)
    put(ORG_OTHER_SHARD, ENV_2)
    assert buffer.shard_has_work() == [False, True, False, True]
    assert buffer.shard_has_work([3, 0]) == [True, False]
    lease(buffer)
    assert buffer.shard_has_work([3]) == [True]  # leased entries may expire and need reclaiming


def test_sets_track_queue_presence_through_a_full_life_cycle(buffer, put):
    """Every transition, in one walk, with the invariant checked after each step."""
    a, b, c = put(ORG, ENV, count=3)
    d = put(ORG, ENV_2)
    e = put(ORG_B, ENV + 200)
    assert_consistent(buffer)

    steps = [
        lambda: lease(buffer, n=2, now_ms=0, lease_ms=100),  # a, b leased; c queued
        lambda: buffer.requeue(SHARD, a, now_ms=10, delay_ms=50, error="e"),
        lambda: lease(buffer, n=5, now_ms=20, lease_ms=100),  # c leased; ENV empties
        lambda: lease(buffer, env_id=ENV_2, n=5, now_ms=20, lease_ms=100),  # d leased; ORG leaves orgs
        lambda: buffer.promote_due(SHARD, now_ms=60, limit=10),  # a back; ORG re-joins
        lambda: buffer.reclaim_expired(SHARD, now_ms=100, limit=10),  # b expired → retry
        lambda: buffer.release(SHARD, [c]),  # c back at the head
        lambda: buffer.ack(SHARD, [d], now_ms=110, grace_ms=30_000),
        lambda: buffer.dead_letter(SHARD, e, now_ms=120, reason="gone"),  # ORG_B leaves
        lambda: buffer.promote_due(SHARD, now_ms=120, limit=10),  # b back
        lambda: lease(buffer, n=10, now_ms=130, lease_ms=100),  # b, c, a
        lambda: buffer.ack(SHARD, [a, b, c], now_ms=140, grace_ms=30_000),
    ]
    for step in steps:
        step()
        assert_consistent(buffer)

    assert buffer.orgs(SHARD) == []
    assert buffer.shard_has_work([SHARD]) == [False]
    assert [buffer.get(run, org_id=ORG).status for run in (a, b, c, d)] == [EntryStatus.ACKED] * 4
