"""The shard counters the gauges read (``queued``, ``heads``) and the env index stay equal to a full recount
after every kind of transition, and in a random sequence of all of them (docs/architecture.md#shard-counters).

``assert_consistent`` recounts every queue, set and entry of the buffer and compares them with the counters,
the heads, ``Buffer.shard_stats`` and the env index; the tests here also pin the numbers they expect, so a
counter that drifted the same way as a recount could not pass either.
"""

from __future__ import annotations

import random

import pytest

from buffer.keys import shard_for
from buffer.values import EntryStatus
from tests.buffer.invariants import assert_consistent

# Orgs 1, 3 and 8 share shard 3 of 4; org 2 is in shard 1.
ORG, ORG_B, ORG_OTHER = 1, 3, 2
SHARD = 3
ENV, ENV_2, ENV_B, ENV_OTHER = 10, 11, 30, 20
LEASE_MS = 30_000


def stats(buffer, shard=SHARD, now_ms=0):
    return buffer.shard_stats_of(shard, now_ms=now_ms)


def lease(buffer, env_id=ENV, org_id=ORG, n=10, now_ms=2_000):
    return buffer.lease(buffer.shard_for(org_id), org_id=org_id, env_id=env_id, n=n, now_ms=now_ms, lease_ms=LEASE_MS)


def test_layout_of_the_test_orgs():
    assert [shard_for(org, 4) for org in (ORG, ORG_B, ORG_OTHER)] == [SHARD, SHARD, 1]


def test_accept_counts_the_entry_and_its_queue_head(buffer, put):
    put(ORG, ENV, now_ms=1_000, count=2)
    put(ORG, ENV_2, now_ms=1_500)
    put(ORG_B, ENV_B, now_ms=900)
    s = stats(buffer)
    assert (s.queued, s.oldest_accepted_ms) == (4, 900)
    assert stats(buffer, shard=1).queued == 0
    assert_consistent(buffer)


def test_lease_ack_and_release_move_the_counters(buffer, put):
    first, second, third = put(ORG, ENV, now_ms=1_000, count=3)
    buffer._client.hset(buffer.keys(SHARD).entry(second), "accepted_ms", 1_200)  # so the head's age is visible
    lease(buffer, n=1)
    assert (stats(buffer).queued, stats(buffer).leased, stats(buffer).oldest_accepted_ms) == (2, 1, 1_200)
    assert_consistent(buffer)
    lease(buffer, n=5)
    assert (stats(buffer).queued, stats(buffer).leased, stats(buffer).oldest_accepted_ms) == (0, 3, None)
    assert_consistent(buffer)
    buffer.release(SHARD, [second, third])
    assert (stats(buffer).queued, stats(buffer).leased, stats(buffer).oldest_accepted_ms) == (2, 1, 1_200)
    assert_consistent(buffer)
    assert buffer.ack(SHARD, [first], now_ms=5_000, grace_ms=30_000).count == 1
    assert (stats(buffer).queued, stats(buffer).leased) == (2, 0)
    assert_consistent(buffer)


def test_ack_of_a_queued_entry_and_with_zero_grace(buffer, put):
    a, b = put(ORG, ENV, count=2)
    buffer.ack(SHARD, [a], now_ms=5_000, grace_ms=0)  # a reclaim raced the drain: the id was back in the queue
    assert stats(buffer).queued == 1
    assert_consistent(buffer)
    buffer.ack(SHARD, [b], now_ms=5_000, grace_ms=30_000)
    assert stats(buffer).queued == 0
    assert_consistent(buffer)


def test_requeue_promote_and_reclaim(buffer, put):
    a, b = put(ORG, ENV, now_ms=1_000, count=2)
    lease(buffer, n=2, now_ms=2_000)
    buffer.requeue(SHARD, a, now_ms=3_000, delay_ms=1_000, error="deadlock")
    s = stats(buffer, now_ms=3_000)
    assert (s.queued, s.retrying, s.leased, s.oldest_accepted_ms) == (0, 1, 1, 1_000)
    assert_consistent(buffer)
    # Crash recovery: b's worker died, its lease expires and is reclaimed.
    assert buffer.reclaim_expired(SHARD, now_ms=2_000 + LEASE_MS, limit=10) == [(b, 1)]
    s = stats(buffer, now_ms=2_000 + LEASE_MS)
    assert (s.queued, s.retrying, s.leased, s.expired_leases) == (0, 2, 0, 0)
    assert_consistent(buffer)
    assert buffer.promote_due(SHARD, now_ms=2_000 + LEASE_MS, limit=10) == 2
    assert (stats(buffer).queued, stats(buffer).retrying, stats(buffer).oldest_accepted_ms) == (2, 0, 1_000)
    assert_consistent(buffer)
    assert buffer.lease_solo(SHARD, org_id=ORG, env_id=ENV, now_ms=40_000, lease_ms=LEASE_MS) is not None
    assert stats(buffer).queued == 1
    assert_consistent(buffer)


def test_an_expired_lease_counts_as_expired_until_reclaimed(buffer, put):
    put(ORG, ENV)
    lease(buffer, n=1, now_ms=2_000)
    assert stats(buffer, now_ms=2_000 + LEASE_MS).expired_leases == 1
    assert_consistent(buffer)


@pytest.mark.parametrize("state", ["queued", "retrying", "leased"])
def test_dead_letter_and_redrive(buffer, put, state):
    run_id, _ = put(ORG, ENV, count=2)
    if state != "queued":
        lease(buffer, n=1)
    if state == "retrying":
        buffer.requeue(SHARD, run_id, now_ms=3_000, delay_ms=60_000, error="e")
    assert buffer.dead_letter(SHARD, run_id, now_ms=4_000, reason="gone")
    s = stats(buffer)
    assert (s.queued, s.retrying, s.leased, s.dead) == (1, 0, 0, 1)
    assert_consistent(buffer)
    assert buffer.redrive(SHARD, now_ms=5_000, limit=10) == (1, 0)
    assert (stats(buffer).queued, stats(buffer).dead) == (2, 0)
    assert_consistent(buffer)


def test_take_and_requeue_now_from_every_state(buffer, put):
    queued, retrying, dead, expired = put(ORG, ENV, now_ms=1_000, count=4)
    lease(buffer, n=4, now_ms=2_000)
    buffer.release(SHARD, [queued])
    buffer.requeue(SHARD, retrying, now_ms=3_000, delay_ms=60_000, error="e")
    buffer.dead_letter(SHARD, dead, now_ms=3_000, reason="gone")
    assert (stats(buffer).queued, stats(buffer).retrying, stats(buffer).dead, stats(buffer).leased) == (1, 1, 1, 1)
    now = 2_000 + LEASE_MS
    assert buffer.requeue_now(SHARD, [retrying, dead, expired, queued], now_ms=now) == (3, 1)
    assert (stats(buffer).queued, stats(buffer).retrying, stats(buffer).dead, stats(buffer).leased) == (4, 0, 0, 0)
    assert_consistent(buffer)
    taken = buffer.take(SHARD, [queued, dead], now_ms=now, lease_ms=LEASE_MS)
    assert sorted(e.run_id for e in taken) == sorted([queued, dead])
    assert all(e.snapshot for e in taken)
    assert (stats(buffer).queued, stats(buffer).leased) == (2, 2)
    assert_consistent(buffer)


def test_cancel_and_append_tags_change_no_counter(buffer, put):
    run_id = put(ORG, ENV)
    before = stats(buffer)
    buffer.cancel(run_id, org_id=ORG, env_id=ENV, now_ms=5_000, reason="stop")
    buffer.append_tags(run_id, org_id=ORG, env_id=ENV, tags=["x"], max_tags=10)
    assert stats(buffer) == before
    assert_consistent(buffer)


def test_dead_letter_env_empties_the_env_from_the_counters(buffer, put):
    put(ORG, ENV, now_ms=1_000, count=5)
    put(ORG, ENV_2, now_ms=2_000)
    lease(buffer, n=1)
    assert buffer.dead_letter_env(org_id=ORG, env_id=ENV, now_ms=9_000, reason="env deleted") == 5
    s = stats(buffer)
    assert (s.queued, s.leased, s.dead, s.oldest_accepted_ms) == (1, 0, 5, 2_000)
    assert_consistent(buffer)


def test_oldest_skips_paused_envs_and_orgs_without_walking_them(buffer, put):
    put(ORG, ENV, now_ms=1_000)
    put(ORG, ENV_2, now_ms=2_000)
    put(ORG_B, ENV_B, now_ms=3_000)
    buffer.pause(org_id=ORG, env_id=ENV)
    assert stats(buffer).oldest_accepted_ms == 2_000
    buffer.pause(org_id=ORG)
    assert stats(buffer).oldest_accepted_ms == 3_000
    assert stats(buffer).queued == 3  # paused entries still count in the depth
    assert_consistent(buffer)
    buffer.resume(org_id=ORG)
    buffer.resume(org_id=ORG, env_id=ENV)
    assert stats(buffer).oldest_accepted_ms == 1_000


def test_a_random_sequence_of_every_transition_keeps_the_counters_exact(buffer, put):
    rng = random.Random(11)
    envs = [(ORG, ENV), (ORG, ENV_2), (ORG_B, ENV_B), (ORG_OTHER, ENV_OTHER)]
    now = 10_000
    org_of: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for step in range(250):
        now += rng.randrange(1, 4_000)
        org, env = rng.choice(envs)
        shard = buffer.shard_for(org)
        mine = [run_id for run_id, o in org_of.items() if buffer.shard_for(o) == shard]
        some = rng.sample(mine, min(len(mine), rng.randrange(1, 4)))
        op = rng.choice(
            ["accept", "accept", "lease", "ack", "requeue", "promote", "reclaim", "release", "dead", "redrive",
             "take", "requeue_now", "cancel", "dead_env", "solo"]
        )  # fmt: skip
        if op == "accept":
            org_of.update(dict.fromkeys(put(org, env, now_ms=now, count=rng.randrange(1, 4)), org))
        elif op == "lease":
            lease(buffer, env_id=env, org_id=org, n=rng.randrange(1, 4), now_ms=now)
        elif op == "solo":
            buffer.lease_solo(shard, org_id=org, env_id=env, now_ms=now, lease_ms=LEASE_MS)
        elif op == "ack":
            buffer.ack(shard, some, now_ms=now, grace_ms=rng.choice([0, 30_000]))
        elif op == "requeue":
            for run_id in some:
                buffer.requeue(shard, run_id, now_ms=now, delay_ms=2_000, error="e")
        elif op == "promote":
            buffer.promote_due(shard, now_ms=now, limit=rng.randrange(1, 5))
        elif op == "reclaim":
            buffer.reclaim_expired(shard, now_ms=now + rng.choice([0, LEASE_MS]), limit=5)
        elif op == "release":
            buffer.release(shard, some)
        elif op == "dead":
            for run_id in some:
                buffer.dead_letter(shard, run_id, now_ms=now, reason="gone")
        elif op == "redrive":
            buffer.redrive(shard, now_ms=now, limit=rng.randrange(1, 4))
        elif op == "take":
            buffer.take(shard, some, now_ms=now, lease_ms=LEASE_MS)
        elif op == "requeue_now":
            buffer.requeue_now(shard, some, now_ms=now + LEASE_MS)
        elif op == "cancel":
            for run_id in some:
                buffer.cancel(run_id, org_id=org_of[run_id], env_id=env, now_ms=now, reason="x")
        elif op == "dead_env":
            buffer.dead_letter_env(org_id=org, env_id=env, now_ms=now, reason="env deleted")
        try:
            assert_consistent(buffer)
        except AssertionError as exc:
            raise AssertionError(f"step {step} ({op}): {exc}") from exc
        for run_id, o in org_of.items():
            entry = buffer.get(run_id, org_id=o, snapshot=False)
            if entry is not None:
                seen.add((op, entry.status.value))
    statuses = {status for _, status in seen}
    assert statuses == {s.value for s in EntryStatus}, f"the sequence visited too few states: {statuses}"


def test_recount_rebuilds_counters_lost_or_never_kept(buffer, put):
    """A buffer filled before the scripts kept counters (or a counter damaged by hand) is repaired."""
    put(ORG, ENV, now_ms=1_000, count=3)
    put(ORG_B, ENV_B, now_ms=2_000)
    k = buffer.keys(SHARD)
    buffer._client.delete(k.queued, k.heads)
    assert (stats(buffer).queued, stats(buffer).oldest_accepted_ms) == (0, None)
    assert buffer.recount(SHARD) == (0, 4)
    assert (stats(buffer).queued, stats(buffer).oldest_accepted_ms) == (4, 1_000)
    assert buffer.recount(SHARD) == (4, 4)
    assert_consistent(buffer)
