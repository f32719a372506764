"""``Buffer.env_page``: an env's buffered runs newest first by (created_ms, run id), paged by a cursor that
neither skips nor repeats while entries drain between pages (docs/architecture.md#env-index)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from buffer.values import EntryStatus
from runs.ids import new_run_id
from runs.snapshot import Snapshot, from_snapshot, to_ms, to_snapshot
from tests.buffer.invariants import assert_consistent

ORG, ENV, OTHER_ENV = 1, 10, 11
OTHER_ORG, OTHER_ORG_ENV = 3, 30  # org 3 shares org 1's shard (3 of 4)
SHARD = 3


def accept(buffer, created_ms: int, *, org_id=ORG, env_id=ENV, run_id=None, accepted_ms=5_000) -> str:
    run_id = run_id or new_run_id(created_ms)
    s = Snapshot(
        id=run_id, env_id=env_id, org_id=org_id, task_identifier="t",
        created_at=datetime.fromtimestamp(created_ms / 1000, tz=UTC), payload='{"created_ms":1}',
    )  # fmt: skip
    result = buffer.accept(
        run_id=run_id, env_id=env_id, org_id=org_id, snapshot=to_snapshot(s), now_ms=accepted_ms, idempotency=None,
        max_per_env=10**6,
    )  # fmt: skip
    assert result.status == "ACCEPTED"
    return run_id


def page_all(buffer, *, limit, between=None, env_id=ENV):
    """Every page until a short one; ``between(page_no)`` runs between pages."""
    seen, before, n = [], None, 0
    while True:
        page = buffer.env_page(org_id=ORG, env_id=env_id, before=before, limit=limit)
        seen += page
        if len(page) < limit:
            return seen
        before = (page[-1].created_ms, page[-1].run_id)
        n += 1
        if between:
            between(n)


def test_newest_first_with_ties_by_run_id_and_the_rows_created_at(buffer):
    ids = {accept(buffer, ms) for ms in (1_767_225_600_000, 1_767_225_600_500, 1_767_225_601_000)}
    ties = {accept(buffer, 1_767_225_600_500, run_id=f"run_tie{i}") for i in range(3)}
    page = buffer.env_page(org_id=ORG, env_id=ENV, before=None, limit=10)
    keys = [(e.created_ms, e.run_id) for e in page]
    assert keys == sorted(keys, reverse=True)
    assert {e.run_id for e in page} == ids | ties
    for e in page:  # created_ms is the snapshot's (what the row's created_at becomes), not accepted_ms
        assert e.created_ms == to_ms(from_snapshot(e.snapshot).created_at)
        assert e.accepted_ms == 5_000
        assert e.status is EntryStatus.QUEUED
    assert_consistent(buffer)


def test_the_cursor_is_strict_and_pages_through_ties(buffer):
    same = sorted(accept(buffer, 1_000, run_id=f"run_{i:02d}") for i in range(7))
    seen = page_all(buffer, limit=3)
    assert [e.run_id for e in seen] == same[::-1]
    page = buffer.env_page(org_id=ORG, env_id=ENV, before=(1_000, same[3]), limit=10)
    assert [e.run_id for e in page] == same[:3][::-1]
    assert buffer.env_page(org_id=ORG, env_id=ENV, before=(1_000, same[0]), limit=10) == []
    assert [e.run_id for e in buffer.env_page(org_id=ORG, env_id=ENV, before=(1_001, ""), limit=2)] == same[:-3:-1]


def test_every_state_until_acked_is_listed_and_only_this_env(buffer):
    queued, leased, retrying, dead, acked = (accept(buffer, 1_000 + i) for i in range(5))
    accept(buffer, 2_000, env_id=OTHER_ENV)
    accept(buffer, 2_000, org_id=OTHER_ORG, env_id=OTHER_ORG_ENV)
    buffer.lease(SHARD, org_id=ORG, env_id=ENV, n=5, now_ms=10_000, lease_ms=30_000)
    buffer.release(SHARD, [queued])
    buffer.requeue(SHARD, retrying, now_ms=10_000, delay_ms=60_000, error="e")
    buffer.dead_letter(SHARD, dead, now_ms=10_000, reason="gone")
    buffer.ack(SHARD, [acked], now_ms=10_000, grace_ms=30_000)
    page = buffer.env_page(org_id=ORG, env_id=ENV, before=None, limit=10)
    assert {e.run_id: e.status for e in page} == {
        dead: EntryStatus.DEAD, retrying: EntryStatus.QUEUED, leased: EntryStatus.LEASED, queued: EntryStatus.QUEUED,
    }  # fmt: skip
    assert all(e.snapshot and from_snapshot(e.snapshot).id == e.run_id for e in page)
    assert buffer.get(acked, org_id=ORG) is not None  # still readable in its grace, but no longer listed
    assert_consistent(buffer)


def test_paging_while_entries_drain_between_pages_has_no_gap_and_no_repeat(buffer):
    rng = random.Random(3)
    ids = [accept(buffer, 1_000 + rng.randrange(50)) for _ in range(60)]
    drained: set[str] = set()

    def drain_some(_page_no):
        # The drain takes the oldest entries, acks a few, releases the rest; new runs keep arriving.
        leased = buffer.lease(SHARD, org_id=ORG, env_id=ENV, n=6, now_ms=10_000, lease_ms=30_000)
        done = [e.run_id for e in leased[:4]]
        buffer.ack(SHARD, done, now_ms=10_000, grace_ms=30_000)
        buffer.release(SHARD, [e.run_id for e in leased[4:]])
        drained.update(done)
        accept(buffer, 5_000)  # newer than any cursor: belongs to the first page of a new listing

    seen = page_all(buffer, limit=7, between=drain_some)
    listed = [e.run_id for e in seen]
    assert len(listed) == len(set(listed)), "a run was listed twice"
    keys = [(e.created_ms, e.run_id) for e in seen]
    assert keys == sorted(keys, reverse=True)
    # Every run is listed here or was drained (its row is in Postgres, where the list finds it).
    assert set(ids) <= set(listed) | drained
    assert drained, "nothing drained between pages: the test did not test paging under drain"
    assert_consistent(buffer)


def test_an_empty_env_and_bad_arguments(buffer):
    assert buffer.env_page(org_id=ORG, env_id=ENV, before=None, limit=5) == []
    for bad in (dict(limit=0), dict(before=(-1, "run_x")), dict(before=(10**15, "run_x"))):
        with pytest.raises(ValueError, match=r"limit|before"):
            buffer.env_page(org_id=ORG, env_id=ENV, **{"before": None, "limit": 5, **bad})  # type: ignore[arg-type]
