"""StuckEntry rows (docs/architecture.md#stale-sweep, #operator-admin): one per stale, expired-lease or dead entry, resolved once it drains."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from buffer.values import AcceptStatus
from drainer import drain
from drainer.limits import DrainLimits
from runs.models import TaskRun
from runs.snapshot import to_snapshot
from sweep.models import StuckEntry, StuckKind
from tests.factories import EnvironmentFactory, SnapshotFactory
from tests.sweep.conftest import THRESHOLD_MS

pytestmark = pytest.mark.django_db

OLD = 1_000
NOW = OLD + THRESHOLD_MS + 1


def dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def rows() -> dict[str, StuckEntry]:
    return {row.run_id: row for row in StuckEntry.objects.all()}


def test_stale_entries_get_a_row_each_with_their_details(buffer, park, sweep_pass):
    stale = park(7, 70, now_ms=OLD, count=2)
    park(7, 70, now_ms=NOW)  # fresh: no row

    sweep_pass(NOW)

    found = rows()
    assert set(found) == set(stale)
    row = found[stale[0]]
    assert (row.org_id, row.env_id, row.shard, row.kind, row.attempts) == (7, 70, 0, StuckKind.STALE, 0)
    assert (row.accepted_at, row.first_seen_at, row.last_seen_at, row.resolved_at) == (dt(OLD), dt(NOW), dt(NOW), None)
    assert row.age == timedelta(milliseconds=NOW - OLD)


def test_a_row_seen_again_is_refreshed_not_duplicated(buffer, park, sweep_pass):
    (run_id,) = park(7, 70, now_ms=OLD)
    sweep_pass(NOW)
    later = NOW + 60_000
    sweep_pass(later)

    row = StuckEntry.objects.get(run_id=run_id)
    assert (row.first_seen_at, row.last_seen_at) == (dt(NOW), dt(later))
    assert row.age == timedelta(milliseconds=later - OLD)


def test_expired_lease_and_dead_letter_get_rows_of_their_kind(buffer, park, sweep_pass):
    leased_id, dead_id = park(7, 70, now_ms=NOW - 5, count=2)  # fresh: not stale
    buffer.lease(0, org_id=7, env_id=70, n=2, now_ms=NOW - 5, lease_ms=1)  # both leases expire at NOW - 4
    buffer.dead_letter(0, dead_id, now_ms=NOW - 3, reason="env deleted")

    report = sweep_pass(NOW)

    assert (report.expired_total, report.dead_total) == (1, 1)
    found = rows()
    assert (found[leased_id].kind, found[dead_id].kind) == (StuckKind.EXPIRED_LEASE, StuckKind.DEAD)
    assert found[dead_id].last_error == "env deleted"
    assert (found[leased_id].org_id, found[leased_id].env_id) == (7, 70)


def test_unexpired_lease_is_not_stuck(buffer, park, sweep_pass):
    park(7, 70, now_ms=NOW - 5)
    buffer.lease(0, org_id=7, env_id=70, n=1, now_ms=NOW - 5, lease_ms=60_000)

    report = sweep_pass(NOW)

    assert (report.expired_total, report.dead_total, rows()) == (0, 0, {})


def test_rows_resolve_after_their_entries_drain(buffer, sweep_pass, mollifier_settings, settings):
    mollifier_settings(DRAINER_ENABLED=True, LEASE_MS=60_000)
    env = EnvironmentFactory()
    accepted = time.time_ns() // 1_000_000
    stale_snap, leased_snap, other_snap = (SnapshotFactory(env=env) for _ in range(3))
    for snap in (stale_snap, leased_snap, other_snap):
        result = buffer.accept(
            run_id=snap.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(snap), now_ms=accepted,
            idempotency=None, max_per_env=100,
        )  # fmt: skip
        assert result.status == AcceptStatus.ACCEPTED
    # The first two are leased by a drainer that dies: their leases expire unreclaimed.
    buffer.lease(0, org_id=env.org_id, env_id=env.id, n=2, now_ms=accepted, lease_ms=1)
    first = accepted + THRESHOLD_MS + 1
    sweep_pass(first)
    assert {run_id: row.kind for run_id, row in rows().items()} == {
        stale_snap.id: StuckKind.EXPIRED_LEASE, leased_snap.id: StuckKind.EXPIRED_LEASE, other_snap.id: StuckKind.STALE,
    }  # fmt: skip

    report = drain.drain_shard(
        buffer, shard=0, limits=DrainLimits.from_settings(settings.MOLLIFIER), clock=lambda: first
    )  # reclaims, drains
    assert report.created == 3 and TaskRun.objects.filter(env=env).count() == 3

    resolving = sweep_pass(first + 1_000)
    assert resolving.resolved == 3
    assert all(row.resolved_at == dt(first + 1_000) for row in rows().values())
    assert sweep_pass(first + 2_000).resolved == 0  # resolved once


def test_open_row_of_an_entry_still_in_the_buffer_stays_open(buffer, park, sweep_pass):
    (run_id,) = park(7, 70, now_ms=OLD)
    sweep_pass(NOW)
    buffer.lease(0, org_id=7, env_id=70, n=1, now_ms=NOW, lease_ms=60_000)  # being drained, not yet done

    report = sweep_pass(NOW + 1)

    assert report.resolved == 0
    assert StuckEntry.objects.get(run_id=run_id).resolved_at is None
