"""Every row of the drain's outcome table (docs/architecture.md#drain), against real Redis and Postgres."""

from __future__ import annotations

import json
import time
import types

import psycopg
import pytest
from django.db import connection

from buffer.buffer import Buffer
from drainer import drain
from drainer.limits import DrainLimits
from runs import engine
from runs.models import BatchStatus, RunStatus, TaskRun
from runs.signals import run_cancelled
from tests.buffer.invariants import assert_consistent
from tests.factories import BatchFactory, EnvironmentFactory, SnapshotFactory
from tests.live import database_url_of_test_db

pytestmark = pytest.mark.django_db


@pytest.fixture
def env():
    return EnvironmentFactory()


def entry(buffer, run_id, env):
    return buffer.get(run_id, org_id=env.org_id)


def test_buffered_snapshots_become_rows_and_are_acked(buffer, park, cfg, env):
    snaps = [SnapshotFactory(env=env) for _ in range(5)]
    park(*snaps)
    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    assert report.created == 5
    rows = TaskRun.objects.in_bulk([s.id for s in snaps])
    assert len(rows) == 5
    assert all(r.buffered and r.status == RunStatus.PENDING for r in rows.values())
    assert rows[snaps[0].id].created_at == snaps[0].created_at  # trigger time, not drain time
    assert all(entry(buffer, s.id, env).status == "ACKED" for s in snaps)
    assert buffer.orgs(0) == []


def test_row_already_there_is_acked_without_a_second_row(buffer, park, cfg, env):
    snap = SnapshotFactory(env=env)
    engine.materialise_many([snap])  # as if an earlier drain committed and then died before its ack
    park(snap)
    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    assert (report.created, report.existed) == (0, 1)
    assert TaskRun.objects.filter(id=snap.id).count() == 1
    assert entry(buffer, snap.id, env).status == "ACKED"


def test_cancelled_while_buffered_becomes_a_canceled_row_with_one_run_cancelled_event(buffer, park, cfg, env):
    """The buffer's cancel sends no event (there is no row yet); the drain sends it once, with the row."""
    snap = SnapshotFactory(env=env)
    park(snap)
    buffer.cancel(snap.id, org_id=env.org_id, env_id=env.id, now_ms=1_700_000_000_000, reason="user said no")
    events = []
    run_cancelled.connect(lambda **kw: events.append(kw["run_id"]), weak=False, dispatch_uid="t-cancel")
    try:
        report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    finally:
        run_cancelled.disconnect(dispatch_uid="t-cancel")
    row = TaskRun.objects.get(id=snap.id)
    assert report.cancelled == 1
    assert (row.status, row.error["raw"]) == (RunStatus.CANCELED, "user said no")
    assert int(row.completed_at.timestamp() * 1000) == 1_700_000_000_000
    assert events == [snap.id]


def test_cancelled_entry_whose_row_is_live_cancels_the_row(buffer, park, cfg, env):
    snap = SnapshotFactory(env=env)
    engine.trigger(snap)  # live row from a drain whose ack was lost
    park(snap)
    buffer.cancel(snap.id, org_id=env.org_id, env_id=env.id, now_ms=1_700_000_000_000, reason="cancel wins")
    drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    assert TaskRun.objects.get(id=snap.id).status == RunStatus.CANCELED


def test_unreadable_snapshot_becomes_a_system_failure_row_keeping_its_batch(buffer, park, cfg, env):
    batch = BatchFactory(env=env, run_count=1)
    snap = SnapshotFactory(env=env)
    park(snap, raw=json.dumps({"v": 1, "id": snap.id, "task": "t", "batch": batch.id, "batch_index": 0}))
    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    row = TaskRun.objects.get(id=snap.id)
    assert report.failed == 1
    assert row.status == RunStatus.SYSTEM_FAILURE
    assert row.error["raw"].startswith("Mollifier drainer terminal failure: unreadable snapshot")
    assert (row.batch_id, row.batch_index) == (batch.id, 0)
    batch.refresh_from_db()
    assert batch.status == BatchStatus.PARTIAL_FAILED  # the batch does not wait forever on it
    assert entry(buffer, snap.id, env).status == "ACKED"


def test_invalid_snapshot_becomes_a_system_failure_row(buffer, park, cfg, env):
    snap = SnapshotFactory(env=env, tags=[f"t{i}" for i in range(12)])
    park(snap)
    drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    row = TaskRun.objects.get(id=snap.id)
    assert row.status == RunStatus.SYSTEM_FAILURE
    assert "at most 10 tags" in row.error["raw"]


def test_entry_whose_env_is_gone_is_dead_lettered_with_its_reason(buffer, park, cfg, env):
    snap = SnapshotFactory(env=env)
    park(snap)
    org_id = env.org_id
    env.delete()
    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    dead = buffer.get(snap.id, org_id=org_id)
    assert report.dead == 1
    assert dead.status == "DEAD"
    assert "does not exist" in dead.last_error
    assert not TaskRun.objects.filter(id=snap.id).exists()


def test_exhausted_attempts_become_a_system_failure_row(buffer, park, cfg, env, mollifier_settings):
    cfg = mollifier_settings(MAX_ATTEMPTS=2)
    snap = SnapshotFactory(env=env)
    park(snap, now_ms=0)
    for now in (0, 1):  # leased twice, each lease abandoned (a crashed worker) and reclaimed
        assert len(buffer.lease(0, org_id=env.org_id, env_id=env.id, n=10, now_ms=now * 100_000, lease_ms=10)) == 1
        buffer.reclaim_expired(0, now_ms=now * 100_000 + 50, limit=10)
        buffer.promote_due(0, now_ms=now * 100_000 + 10_000_000, limit=10)
    drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    row = TaskRun.objects.get(id=snap.id)
    assert row.status == RunStatus.SYSTEM_FAILURE
    assert "gave up after 2 attempts" in row.error["raw"]


def test_accepted_run_whose_key_another_run_holds_is_written_without_the_key(buffer, park, cfg, env):
    """Its id was answered to the client, so it must exist; the key stays with the run holding it."""
    holder = SnapshotFactory(env=env, idempotency_key="k")
    engine.trigger(holder)
    snap = SnapshotFactory(env=env, idempotency_key="k")
    park(snap)
    drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    row = TaskRun.objects.get(id=snap.id)
    assert (row.status, row.idempotency_key) == (RunStatus.PENDING, None)
    assert TaskRun.objects.get(id=holder.id).idempotency_key == "k"


def test_accepted_run_takes_over_the_key_of_a_failed_run(buffer, park, cfg, env):
    holder = SnapshotFactory(env=env, idempotency_key="k")
    engine.create_failed_run(holder, "boom")
    snap = SnapshotFactory(env=env, idempotency_key="k")
    park(snap)
    drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
    assert TaskRun.objects.get(id=snap.id).idempotency_key == "k"
    assert TaskRun.objects.get(id=holder.id).idempotency_key is None


def test_cancel_that_lands_while_leased_cancels_the_row_after_the_ack(buffer, park, cfg, env):
    """The drain wrote the row from the lease-time snapshot; the flag set meanwhile must still win."""
    snap = SnapshotFactory(env=env)
    park(snap)
    entries = buffer.lease(0, org_id=env.org_id, env_id=env.id, n=10, now_ms=1_000, lease_ms=60_000)
    buffer.cancel(snap.id, org_id=env.org_id, env_id=env.id, now_ms=1_500, reason="too late?")
    report = drain.materialise(buffer, shard=0, entries=entries, limits=DrainLimits.from_settings(cfg), now_ms=2_000)
    assert report.created == 1
    row = TaskRun.objects.get(id=snap.id)
    assert (row.status, row.error["raw"]) == (RunStatus.CANCELED, "too late?")


def test_a_corrupt_compressed_snapshot_becomes_a_failure_row_with_its_reason(
    buffer, park, cfg, env, redis_client, mollifier_settings
):
    """A compressed value that no longer decompresses is an unreadable snapshot like any other: a
    SYSTEM_FAILURE row naming the corruption, the entry acked, the rest of the round written."""
    mollifier_settings(SNAPSHOT_COMPRESS_MIN_BYTES=1)
    buffer = Buffer.from_settings()
    bad, good = SnapshotFactory(env=env, payload="x" * 400), SnapshotFactory(env=env, payload="y" * 400)
    park(bad, good)
    key = buffer.keys_for_org(env.org_id).snapshot(bad.id)
    value = redis_client.get(key)
    assert value[:1] == b"\x01"
    redis_client.set(key, value[:-3])  # truncated

    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))

    assert (report.failed, report.created) == (1, 1)
    row = TaskRun.objects.get(id=bad.id)
    assert row.status == RunStatus.SYSTEM_FAILURE
    assert "unreadable snapshot: compressed snapshot is" in row.error["raw"]
    assert TaskRun.objects.get(id=good.id).payload == "y" * 400
    assert entry(buffer, bad.id, env).status == "ACKED"
    assert_consistent(buffer)


def test_a_corrupt_snapshot_whose_failure_row_cannot_be_written_is_dead_lettered_with_its_reason(
    buffer, park, cfg, env, redis_client, mollifier_settings
):
    mollifier_settings(SNAPSHOT_COMPRESS_MIN_BYTES=1)
    buffer = Buffer.from_settings()
    bad = SnapshotFactory(env=env, payload="x" * 400)
    park(bad)
    key = buffer.keys_for_org(env.org_id).snapshot(bad.id)
    redis_client.set(key, redis_client.get(key)[:-3])
    env.delete()  # not even the failure row can be written

    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))

    assert report.dead == 1
    dead = buffer.get(bad.id, org_id=bad.org_id)
    assert dead.status == "DEAD" and "compressed snapshot is" in dead.last_error
    assert_consistent(buffer)


@pytest.mark.django_db(transaction=True)
def test_lock_timeout_requeues_with_attempts_plus_one(buffer, park, cfg, env):
    """A real row lock held by another session makes the insert time out (55P03): retryable."""
    snap = SnapshotFactory(env=env)
    park(snap)
    with psycopg.connect(database_url_of_test_db()) as other:
        other.execute(  # an uncommitted insert of the same id: our insert must wait for it
            "INSERT INTO runs_taskrun (id, env_id, org_id, task_identifier, status, payload_type, tags, priority,"
            " depth, created_at, buffered) VALUES (%s, %s, %s, 't', 'PENDING', 'application/json', '{}', 0, 0,"
            " now(), false)",
            (snap.id, env.id, env.org_id),
        )
        with connection.cursor() as cur:
            cur.execute("SET lock_timeout = '200ms'")
        try:
            report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))
        finally:
            with connection.cursor() as cur:
                cur.execute("RESET lock_timeout")
        other.rollback()
    got = entry(buffer, snap.id, env)
    assert report.requeued == 1
    assert (got.status, got.attempts) == ("QUEUED", 1)
    assert "LockNotAvailable" in got.last_error or "lock timeout" in got.last_error
    assert not TaskRun.objects.filter(id=snap.id).exists()


@pytest.mark.django_db(transaction=True)
def test_postgres_outage_releases_the_round_with_attempts_unchanged_and_opens_the_circuit(buffer, park, cfg, env):
    snaps = [SnapshotFactory(env=env) for _ in range(3)]
    park(*snaps)
    saved = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"  # connection refused: Postgres is "down"
    try:
        report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg), sleep=lambda s: None)
    finally:
        connection.close()
        connection.settings_dict["PORT"] = saved
    assert report.outage
    assert report.failed == report.created == 0
    for s in snaps:
        got = entry(buffer, s.id, env)
        assert (got.status, got.attempts) == ("QUEUED", 0)
    assert buffer.depth(0, env.id) == 3
    assert buffer._client.hget(buffer.keys(0).drain_circuit, "until_ms") is not None
    assert not TaskRun.objects.exists()
    # Postgres is back: the next run drains everything and closes the circuit.
    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg), sleep=lambda s: None)
    assert report.created == 3
    assert not buffer._client.exists(buffer.keys(0).drain_circuit)


def test_disabled_drainer_task_does_not_pop(buffer, park, env, mollifier_settings):
    from drainer.tasks import drain_shard as task

    mollifier_settings(DRAINER_ENABLED=False)
    snap = SnapshotFactory(env=env)
    park(snap)
    assert task.run(0) is None
    assert entry(buffer, snap.id, env).status == "QUEUED"


def test_two_drain_tasks_on_one_shard_the_lock_admits_one(buffer, park, env):
    from drainer.tasks import drain_shard as task

    with buffer.shard_lock(0, "drain", timeout_s=10) as held:
        assert held
        park(SnapshotFactory(env=env))
        assert task.run(0) == {"shard": 0, "locked": True}
        assert buffer.depth(0, env.id) == 1


@pytest.mark.django_db(transaction=True)
def test_tags_added_after_a_stale_lease_was_reclaimed_reach_the_row_a_slow_drainer_writes(buffer, park, cfg, env):
    """A slow drainer's lease expires; the entry is reclaimed (QUEUED again) and gets a tag (the client is told
    200); then the slow drainer commits the snapshot it leased, without the tag, and acks. The tag must
    reach the row anyway."""
    snap = SnapshotFactory(env=env, tags=["first"])
    park(snap, now_ms=1_000)
    limits = DrainLimits.from_settings(cfg)
    (stale,) = buffer.lease(0, org_id=env.org_id, env_id=env.id, n=1, now_ms=1_000, lease_ms=limits.lease_ms)
    later = 1_000 + limits.lease_ms + 1
    assert buffer.reclaim_expired(0, now_ms=later, limit=10) == [(snap.id, 1)]
    assert buffer.promote_due(0, now_ms=later, limit=10) == 1
    assert buffer.append_tags(snap.id, org_id=env.org_id, env_id=env.id, tags=["late"], max_tags=10).status == "QUEUED"

    report = drain.materialise(buffer, shard=0, entries=[stale], limits=limits, now_ms=later + 5)

    assert report.created == 1
    assert TaskRun.objects.get(id=snap.id).tags == ["first", "late"]
    assert entry(buffer, snap.id, env).status == "ACKED"


@pytest.mark.django_db(transaction=True)
def test_a_snapshot_that_breaks_the_parser_itself_becomes_a_failure_row_not_a_crash_loop(buffer, park, cfg, env):
    """Deep nesting makes json raise RecursionError, not ValueError: the round must still resolve the entry."""
    snap = SnapshotFactory(env=env)
    park(snap, raw="[" * 200_000 + "]" * 200_000)

    report = drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(cfg))

    assert report.failed == 1
    row = TaskRun.objects.get(id=snap.id)
    assert row.status == RunStatus.SYSTEM_FAILURE and "unreadable snapshot" in row.error["raw"]
    assert entry(buffer, snap.id, env).status == "ACKED"


@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_clock_runs_ahead_does_not_reclaim_anothers_live_lease(buffer, park, cfg, env, monkeypatch):
    """Lease decisions use Redis's clock: a worker an hour ahead must not take a lease that is 1 s old."""
    from drainer.tasks import drain_shard as task
    from mollifier_project import clock

    snap = SnapshotFactory(env=env)
    park(snap)
    live = buffer.lease(0, org_id=env.org_id, env_id=env.id, n=1, now_ms=buffer.server_time_ms(), lease_ms=30_000)
    assert [e.run_id for e in live] == [snap.id]
    real_ns = time.time_ns
    monkeypatch.setattr(clock, "time", types.SimpleNamespace(time_ns=lambda: real_ns() + 3_600 * 10**9))
    assert clock.now_ms() - buffer.server_time_ms() > 3_500_000  # this worker's wall clock is an hour ahead

    result = task.run(0)

    assert "reclaimed" not in (result or {})
    got = entry(buffer, snap.id, env)
    assert (got.status, got.attempts) == ("LEASED", 0)


@pytest.mark.django_db(transaction=True)
def test_the_drain_task_bounds_its_statements_and_leaves_the_connection_as_it_found_it(buffer, park, env):
    from drainer.tasks import drain_shard as task

    seen = []

    def spy(sender, run_id, **kwargs):
        with connection.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            statement = cur.fetchone()[0]
            cur.execute("SHOW lock_timeout")
            seen.append((statement, cur.fetchone()[0]))

    from runs.signals import run_created

    run_created.connect(spy, dispatch_uid="t-timeouts")
    try:
        park(SnapshotFactory(env=env))
        task.run(0)
    finally:
        run_created.disconnect(dispatch_uid="t-timeouts")
    with connection.cursor() as cur:
        cur.execute("SHOW statement_timeout")
        after = cur.fetchone()[0]

    assert seen == [("15s", "5s")]  # LEASE_MS / 2, and LOCK_WAIT_MS
    assert after == "0"
