"""The EXISTED race (drainer/drain.py, crash point 3) with a mutation answered in between: drainer A writes a
run's row but has not committed when its lease expires; the reclaimed entry is QUEUED again, so a tag, a
reschedule or a metadata set is answered 200 and stored on the entry; drainer B leases the entry with it, its
insert waits on A's row; A commits; B sees EXISTED. The row must end with what the client was told.

Deterministic: A is a real transaction on its own connection (a thread) that commits only when the test says,
B is the project's ``drain.run_round`` on another thread, and the test releases A only once B's insert is
seen waiting on A's row lock in ``pg_stat_activity``. Real Redis, real Postgres, no mocks.
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from buffer.buffer import Buffer
from drainer import drain
from drainer.limits import DrainLimits
from mollifier_project.clock import from_ms, now_ms
from runs import engine, mutations, overrides
from runs.auth import EnvContext
from runs.models import RunStatus, TaskRun
from runs.snapshot import from_snapshot
from tests.drainer.processes import inserts_waiting_on_a_lock, wait_until
from tests.factories import EnvironmentFactory, SnapshotFactory

LEASE_MS = 1_000


def context(env) -> EnvContext:
    return EnvContext(
        env_id=env.id, org_id=env.org_id, env_slug=env.slug, env_type=env.type, org_slug=env.org.slug, enrolled=True
    )


class StalledDrainerA(threading.Thread):
    """Drainer A: writes the leased entry's row in a transaction that commits only on ``commit``."""

    def __init__(self, buffer: Buffer, entry, now: int) -> None:
        super().__init__(daemon=True)
        self.buffer, self.entry, self.now = buffer, entry, now
        self.written, self.commit = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            snapshot = overrides.effective(from_snapshot(self.entry.snapshot), self.entry)
            with transaction.atomic():
                (result,) = engine.materialise_many([snapshot], now=from_ms(self.now), fresh=True)
                assert result.outcome is engine.Outcome.CREATED
                self.written.set()
                assert self.commit.wait(30)
            self.buffer.ack(0, [self.entry.run_id], now_ms=self.now, grace_ms=30_000)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connection.close()


class DrainerB(threading.Thread):
    def __init__(self, buffer: Buffer, limits: DrainLimits, now: int) -> None:
        super().__init__(daemon=True)
        self.buffer, self.limits, self.now = buffer, limits, now
        self.report = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.report = drain.run_round(self.buffer, shard=0, limits=self.limits, now_ms=self.now)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            connection.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mutation", ["tags", "reschedule", "metadata"])
@pytest.mark.parametrize("max_attempts", [3, 1], ids=["normal", "attempts-exhausted"])
def test_a_mutation_answered_on_the_reclaimed_entry_reaches_the_row_the_stalled_drainer_commits(
    buffer, park, mollifier_settings, mutation, max_attempts
):
    """With ``max_attempts`` 1 the reclaimed entry has no attempt left: B writes a SYSTEM_FAILURE row, whose
    insert finds A's row (EXISTED) the same way and must carry the mutation onto it just the same."""
    cfg = mollifier_settings(MAX_ATTEMPTS=max_attempts)
    env = EnvironmentFactory()
    now = now_ms()
    first_delay = from_ms(now + 3_600_000)
    snap = SnapshotFactory(env=env, delay_until=first_delay, metadata={"step": 0}, tags=["user_1"])
    park(snap, now_ms=now)
    limits = DrainLimits.from_settings(cfg)

    # A leases the entry and writes its row; the transaction stays open past the lease.
    (a_entry,) = buffer.lease_round(0, [(env.org_id, env.id, 1)], now_ms=now, lease_ms=LEASE_MS, max_bytes=0).entries
    a = StalledDrainerA(buffer, a_entry, now)
    a.start()
    b: DrainerB | None = None
    try:
        assert a.written.wait(30), a.error
        # The lease expires: the entry is reclaimed and QUEUED again (A's row is invisible to everyone else).
        later = now + LEASE_MS + 1
        assert buffer.reclaim_expired(0, now_ms=later, limit=10) == [(snap.id, 1)]
        assert buffer.promote_due(0, now_ms=later, limit=10) == 1

        # The client's mutation lands on the entry and is answered OK.
        ctx, new_delay = context(env), from_ms(now + 7_200_000)
        if mutation == "tags":
            done = mutations.add_tags(ctx, snap.id, ["late"], buffer=buffer, now_ms=later, wait_ms=0)
        elif mutation == "reschedule":
            done = mutations.reschedule(ctx, snap.id, new_delay, buffer=buffer, now_ms=later, wait_ms=0)
        else:
            done = mutations.update_metadata(
                ctx, snap.id, replace={"step": 1}, operations=[], buffer=buffer, now_ms=later, wait_ms=0,
                limit=cfg.MAX_METADATA_BYTES,
            )  # fmt: skip
        assert done.status is mutations.Status.OK, done

        # B leases the entry (with the mutation) and its insert waits on A's uncommitted row…
        b = DrainerB(buffer, limits, later + 1)
        b.start()
        wait_until(inserts_waiting_on_a_lock, timeout=20, what="drainer B's insert to wait on A's row")
    finally:
        a.commit.set()  # …until A commits.
        a.join(30)
        if b is not None:
            b.join(30)
    assert a.error is None, a.error
    assert b is not None and b.error is None, b.error
    assert (b.report.existed, b.report.created) == (1, 0), b.report
    assert buffer.get(snap.id, org_id=env.org_id).status == "ACKED"

    row = TaskRun.objects.get(id=snap.id)
    if mutation == "tags":
        assert row.tags == ["user_1", "late"]
    elif mutation == "reschedule":
        assert (row.status, row.delay_until) == (RunStatus.DELAYED, new_delay)
    else:
        assert row.metadata == {"step": 1}
    # Nothing else of the row was clobbered.
    assert row.tags[0] == "user_1" and row.status == RunStatus.DELAYED
    assert row.delay_until == (new_delay if mutation == "reschedule" else first_delay)
    assert row.metadata == ({"step": 1} if mutation == "metadata" else {"step": 0})


@pytest.mark.django_db
def test_overrides_merge_into_the_row_and_never_clobber_what_the_row_got_since():
    """``engine.apply_overrides``: tags are appended whatever happened; a delay or metadata replaces the row's
    only while the row is as its writer left it — a row changed since has the newer value and keeps it."""
    env = EnvironmentFactory()
    now = now_ms()
    written, changed = from_ms(now), from_ms(now + 1_000)
    delay, buffered_delay = from_ms(now + 3_600_000), from_ms(now + 7_200_000)
    untouched, touched = (SnapshotFactory(env=env, delay_until=delay, metadata={"step": 0}) for _ in range(2))
    engine.materialise_many([untouched, touched], now=written)
    assert engine.update_metadata(touched.id, env.id, lambda _: ({"step": "row"}, ""), now=changed) == {"step": "row"}
    changes = engine.Overrides(tags=["user_1", "late"], delay_until=buffered_delay, metadata={"step": "buffer"})

    assert engine.apply_overrides(untouched.id, env.id, changes, now=changed) == []
    assert engine.apply_overrides(touched.id, env.id, changes, now=changed) == ["delay", "metadata"]

    rows = TaskRun.objects.in_bulk([untouched.id, touched.id])
    assert (rows[untouched.id].tags, rows[untouched.id].delay_until, rows[untouched.id].metadata) == (
        ["user_1", "late"],
        buffered_delay,
        {"step": "buffer"},
    )
    assert (rows[touched.id].tags, rows[touched.id].delay_until, rows[touched.id].metadata) == (
        ["user_1", "late"],
        delay,
        {"step": "row"},
    )
    # Applying again (a retry after a lost ack) changes nothing more.
    assert engine.apply_overrides(untouched.id, env.id, changes, now=from_ms(now + 2_000)) == []
    assert TaskRun.objects.get(id=untouched.id).updated_at == changed
