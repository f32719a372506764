"""Entries waiting out a retry (``B retry``) are seen by the stale sweep's scan and the oldest-age gauge,
although they are in no env queue (docs/architecture.md#stale-sweep, #telemetry)."""

from __future__ import annotations

import pytest

HOUR_MS = 3_600_000
OLD = 1_000  # accepted_ms of the entries parked in retry
LATER = OLD + HOUR_MS  # an hour later: the drainer never came back
THRESHOLD_MS = 300_000


def park_in_retry(buffer, put, org_id: int, env_id: int, *, count: int = 1, now_ms: int = OLD) -> list[str]:
    """Accept ``count`` entries, lease them and requeue them with an hour's backoff, all at ``now_ms``."""
    run_ids = put(org_id, env_id, now_ms=now_ms, count=count)
    shard = buffer.shard_for(org_id)
    leased = buffer.lease(shard, org_id=org_id, env_id=env_id, n=count, now_ms=now_ms, lease_ms=60_000)
    assert sorted(e.run_id for e in leased) == sorted(run_ids)
    for i, run_id in enumerate(run_ids):  # not-before in acceptance order: the first one is due first
        assert buffer.requeue(shard, run_id, now_ms=now_ms, delay_ms=HOUR_MS + i, error="deadlock") == 1
    return run_ids


def test_find_stuck_lists_a_stale_entry_waiting_in_retry_of_an_env_in_no_queue(buffer, put):
    (run_id,) = park_in_retry(buffer, put, 1, 11)
    shard = buffer.shard_for(1)
    assert buffer.envs(shard, 1) == [] and buffer.orgs(shard) == []  # in no queue: not in the org/env sets

    scan = buffer.find_stuck(shard, [], now_ms=LATER, older_than_ms=THRESHOLD_MS, max_entries=10)

    assert [(f.run_id, f.env_id, f.org_id, f.accepted_ms, f.attempts, f.last_error) for f in scan.retrying] == [
        (run_id, 11, 1, OLD, 1, "deadlock")
    ]
    assert scan.envs == []  # no org visited: the queue scan found nothing


def test_retry_scan_lists_only_stale_entries_and_looks_at_most_max_entries(buffer, put):
    stale = park_in_retry(buffer, put, 1, 11, count=3)
    park_in_retry(buffer, put, 1, 12, now_ms=LATER - 5)  # waiting in retry too, but fresh
    shard = buffer.shard_for(1)

    capped = buffer.find_stuck(shard, [], now_ms=LATER, older_than_ms=THRESHOLD_MS, max_entries=2)
    every = buffer.find_stuck(shard, [], now_ms=LATER, older_than_ms=THRESHOLD_MS, max_entries=10)

    assert [f.run_id for f in capped.retrying] == stale[:2]  # the two due first
    assert [f.run_id for f in every.retrying] == stale


def test_shard_stats_oldest_includes_entries_waiting_in_retry(buffer, put):
    park_in_retry(buffer, put, 1, 11)
    shard = buffer.shard_for(1)

    alone = buffer.shard_stats(now_ms=LATER)[shard]
    put(1, 12, now_ms=LATER - 10)  # a fresh queued entry: its queue head is younger than the retrying one
    both = buffer.shard_stats(now_ms=LATER)[shard]

    assert (alone.queued, alone.retrying, alone.oldest_accepted_ms) == (0, 1, OLD)
    assert (both.queued, both.retrying, both.oldest_accepted_ms) == (1, 1, OLD)


def test_shard_stats_oldest_is_still_a_queue_head_when_it_is_older_than_every_retry(buffer, put):
    put(1, 12, now_ms=OLD - 500)
    park_in_retry(buffer, put, 1, 11)

    assert buffer.shard_stats(now_ms=LATER)[buffer.shard_for(1)].oldest_accepted_ms == OLD - 500


@pytest.mark.parametrize(("younger", "oldest"), [(99, OLD), (100, OLD + 4_000)])
def test_shard_stats_reads_at_most_the_first_hundred_retry_members(buffer, put, younger, oldest):
    """The scrape's cost stays bounded: only the 100 retrying entries due first are read for the oldest age."""
    park_in_retry(buffer, put, 1, 11)  # the oldest entry …
    shard = buffer.shard_for(1)
    later = put(1, 12, now_ms=OLD + 4_000, count=younger)
    buffer.lease(shard, org_id=1, env_id=12, n=younger, now_ms=OLD + 4_000, lease_ms=60_000)
    for run_id in later:  # … is due after every younger one
        buffer.requeue(shard, run_id, now_ms=OLD + 4_000, delay_ms=60_000, error="deadlock")

    stats = buffer.shard_stats(now_ms=LATER)[shard]

    assert (stats.retrying, stats.oldest_accepted_ms) == (younger + 1, oldest)
