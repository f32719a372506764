"""The run engine (docs/architecture.md#run-engine) against real Postgres: rows, outcomes, events, batches and races."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.db import connection

from runs import engine, rows, staging
from runs.engine import CancelConflict, CancelOutcome, InvalidRun, Outcome
from runs.models import BatchStatus, RunAlert, RunStatus, TaskRun
from runs.signals import run_cancelled, run_created, run_failed
from runs.snapshot import Snapshot
from tests.factories import (
    BatchFactory,
    EnvironmentFactory,
    OrganizationFactory,
    SnapshotFactory,
    now_ms_precision,
)

pytestmark = pytest.mark.django_db


@dataclass
class Events:
    created: list[str] = field(default_factory=list)
    cancelled: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def events():
    """Every run_created / run_cancelled / run_failed sent during the test, in order."""
    seen = Events()

    def on_created(sender, run_id, **kwargs):
        seen.created.append(run_id)

    def on_cancelled(sender, run_id, reason, **kwargs):
        seen.cancelled.append((run_id, reason))

    def on_failed(sender, run_id, error, **kwargs):
        seen.failed.append((run_id, error))

    run_created.connect(on_created, weak=False)
    run_cancelled.connect(on_cancelled, weak=False)
    run_failed.connect(on_failed, weak=False)
    yield seen
    run_created.disconnect(on_created)
    run_cancelled.disconnect(on_cancelled)
    run_failed.disconnect(on_failed)


@pytest.fixture
def env():
    return EnvironmentFactory()


@pytest.fixture
def now():
    return now_ms_precision()


def full_snapshot(env, now) -> Snapshot:
    """A snapshot with every optional field set."""
    batch = BatchFactory(env=env, run_count=5)
    return SnapshotFactory(
        env=env,
        created_at=now - timedelta(minutes=5),
        payload='{"json":{"name":"Zoë","quote":"\\"hi\\""}}',
        payload_type="application/super+json",
        metadata={"step": 2, "nested": {"ok": True}},
        tags=["user_1", "tenant_9"],
        idempotency_key="order-42",
        idempotency_key_user="order-42-user",
        idempotency_key_expires_at=now + timedelta(days=30),
        queue="emails",
        concurrency_key="customer-7",
        delay_until=now - timedelta(seconds=1),
        ttl="1h",
        max_attempts=4,
        max_duration=300,
        machine="small-1x",
        priority=7,
        batch_id=batch.id,
        batch_index=3,
        parent_run_id="run_parent0000000000000000000",
        root_run_id="run_root000000000000000000000",
        depth=2,
        trace_id="a" * 32,
        span_id="b" * 16,
    )


# ------------------------------------------------------------------------------------------- trigger


@pytest.mark.parametrize("write", [engine.trigger, lambda s, now: engine.materialise_many([s], now=now)[0]])
def test_every_snapshot_field_is_stored_as_a_pending_row_by_trigger_and_by_the_bulk_path(env, now, events, write):
    snapshot = full_snapshot(env, now)

    result = write(snapshot, now=now)

    assert result == engine.Result(snapshot.id, Outcome.CREATED)
    row = TaskRun.objects.get(id=snapshot.id)
    assert row.status == RunStatus.PENDING
    assert (row.env_id, row.org_id, row.task_identifier) == (env.id, env.org_id, "hello-world")
    assert (row.payload, row.payload_type) == (snapshot.payload, "application/super+json")
    assert row.metadata == {"step": 2, "nested": {"ok": True}}
    assert row.tags == ["user_1", "tenant_9"]
    assert (row.idempotency_key, row.idempotency_key_user) == ("order-42", "order-42-user")
    assert row.idempotency_key_expires_at == snapshot.idempotency_key_expires_at
    assert (row.queue, row.concurrency_key, row.delay_until) == ("emails", "customer-7", snapshot.delay_until)
    assert (row.ttl, row.max_attempts, row.max_duration, row.machine, row.priority) == ("1h", 4, 300, "small-1x", 7)
    assert (row.batch_id, row.batch_index) == (snapshot.batch_id, 3)
    assert (row.parent_run_id, row.root_run_id, row.depth) == (snapshot.parent_run_id, snapshot.root_run_id, 2)
    assert (row.trace_id, row.span_id) == ("a" * 32, "b" * 16)
    assert row.error is None
    assert row.completed_at is None
    assert row.materialised_at == now
    assert events.created == [snapshot.id]


def test_trigger_writes_delayed_row_when_delay_until_is_ahead_of_now(env, now):
    snapshot = SnapshotFactory(env=env, delay_until=now + timedelta(minutes=1))

    engine.trigger(snapshot, now=now)

    assert TaskRun.objects.get(id=snapshot.id).status == RunStatus.DELAYED


def test_created_at_is_the_snapshot_trigger_time_and_materialised_at_is_now(env, now):
    snapshot = SnapshotFactory(env=env, created_at=now - timedelta(hours=2))

    engine.trigger(snapshot, now=now, buffered=True)

    row = TaskRun.objects.get(id=snapshot.id)
    assert row.created_at == now - timedelta(hours=2)
    assert row.materialised_at == now
    assert row.buffered is True


def test_trigger_twice_with_one_run_id_writes_one_row_and_reports_existed(env, now, events):
    snapshot = SnapshotFactory(env=env)

    first = engine.trigger(snapshot, now=now)
    second = engine.trigger(snapshot, now=now + timedelta(seconds=1))

    assert (first.outcome, second.outcome) == (Outcome.CREATED, Outcome.EXISTED)
    assert TaskRun.objects.filter(id=snapshot.id).count() == 1
    assert TaskRun.objects.get(id=snapshot.id).materialised_at == now
    assert events.created == [snapshot.id]


def test_trigger_with_a_held_idempotency_key_reports_clash_with_the_holder(env, now, events):
    holder = SnapshotFactory(env=env, idempotency_key="k1")
    engine.trigger(holder, now=now)
    contender = SnapshotFactory(env=env, idempotency_key="k1")

    result = engine.trigger(contender, now=now)

    assert result == engine.Result(contender.id, Outcome.IDEMPOTENCY_CLASH, existing_run_id=holder.id)
    assert not TaskRun.objects.filter(id=contender.id).exists()
    assert events.created == [holder.id]


def test_same_idempotency_key_for_another_task_is_not_a_clash(env, now):
    engine.trigger(SnapshotFactory(env=env, idempotency_key="k1"), now=now)

    result = engine.trigger(SnapshotFactory(env=env, idempotency_key="k1", task_identifier="other"), now=now)

    assert result.outcome == Outcome.CREATED


def test_trigger_refuses_unknown_environment(env, now):
    snapshot = SnapshotFactory(env=env, env_id=2_000_000_000)

    with pytest.raises(InvalidRun, match="environment 2000000000 does not exist"):
        engine.trigger(snapshot, now=now)

    assert not TaskRun.objects.exists()


def test_trigger_refuses_environment_of_another_organization(env, now):
    other_org = OrganizationFactory()
    snapshot = SnapshotFactory(env=env, org_id=other_org.id)

    with pytest.raises(InvalidRun, match="does not belong to organization"):
        engine.trigger(snapshot, now=now)

    assert not TaskRun.objects.exists()


def test_trigger_refuses_eleven_tags(env, now):
    snapshot = SnapshotFactory(env=env, tags=[f"t{i}" for i in range(11)])

    with pytest.raises(InvalidRun, match="at most 10 tags, got 11"):
        engine.trigger(snapshot, now=now)

    assert not TaskRun.objects.exists()


@pytest.mark.parametrize(("tags", "stored"), [({}, []), (None, []), ("solo", ["solo"]), (["a", "a", "b"], ["a", "b"])])
def test_every_engine_function_normalises_tags(env, now, tags, stored):
    """Lua's cjson turns an empty list into {}; the engine must take that (and null, and a bare string)."""
    triggered, bulk, cancelled, failed = (SnapshotFactory(env=env, tags=tags) for _ in range(4))

    engine.trigger(triggered, now=now)
    engine.materialise_many([bulk], now=now)
    engine.create_cancelled_run(cancelled, now, "user asked", now=now)
    engine.create_failed_run(failed, "broken", now=now)

    rows = dict(TaskRun.objects.values_list("id", "tags"))
    assert rows == {s.id: stored for s in (triggered, bulk, cancelled, failed)}


# ---------------------------------------------------------------------------------- materialise_many


def _expected_outcomes(batch: list[Snapshot], existing: list[Snapshot]) -> list[tuple[str, Outcome, str | None]]:
    """Reference model: the first occurrence of an id or an idempotency key wins, in input order."""
    ids = {s.id for s in existing}
    holders = {(s.env_id, s.task_identifier, s.idempotency_key): s.id for s in existing if s.idempotency_key}
    expected = []
    for s in batch:
        key = (s.env_id, s.task_identifier, s.idempotency_key)
        if s.id in ids:
            expected.append((s.id, Outcome.EXISTED, None))
        elif s.idempotency_key and key in holders:
            expected.append((s.id, Outcome.IDEMPOTENCY_CLASH, holders[key]))
        else:
            expected.append((s.id, Outcome.CREATED, None))
            ids.add(s.id)
            if s.idempotency_key:
                holders[key] = s.id
    return expected


@pytest.mark.parametrize("fresh", [False, True], ids=["staged", "fresh-hint-wrong"])
def test_materialise_many_reports_each_position_and_writes_each_row_once(env, now, events, fresh):
    """With ``fresh=True`` the hint is wrong here (ids and keys clash): the plain COPY is refused by the
    unique constraints and the batch is written staged, with exactly the same results."""
    rng = random.Random(20_251_127)
    existing = [SnapshotFactory(env=env, idempotency_key=f"old-{i}" if i < 10 else None) for i in range(30)]
    engine.materialise_many(existing, now=now)
    events.created.clear()
    fresh = [SnapshotFactory(env=env, idempotency_key=f"new-{i}" if i % 50 == 0 else None) for i in range(4930)]
    keyed_fresh = [s for s in fresh if s.idempotency_key]
    batch = [
        *fresh,
        *rng.sample(fresh, 25),  # 0.5% duplicate ids within the batch
        *rng.sample(existing, 25),  # 0.5% ids already in the table
        *(SnapshotFactory(env=env, idempotency_key=f"old-{i}") for i in range(10)),  # clash with existing rows
        *(SnapshotFactory(env=env, idempotency_key=s.idempotency_key) for s in rng.sample(keyed_fresh, 10)),
    ]
    rng.shuffle(batch)
    assert len(batch) == 5000
    expected = _expected_outcomes(batch, existing)

    results = engine.materialise_many(batch, now=now, fresh=fresh)

    assert [(r.run_id, r.outcome, r.existing_run_id) for r in results] == expected
    counts = {outcome: sum(1 for e in expected if e[1] is outcome) for outcome in Outcome}
    assert counts[Outcome.EXISTED] == 50
    assert counts[Outcome.IDEMPOTENCY_CLASH] == 20
    assert TaskRun.objects.filter(env=env).count() == 30 + counts[Outcome.CREATED]
    assert events.created == [e[0] for e in expected if e[1] is Outcome.CREATED]


def test_materialise_many_marks_an_invalid_snapshot_and_still_writes_the_rest(env, now):
    before = SnapshotFactory(env=env)
    bad = SnapshotFactory(env=env, tags=[f"t{i}" for i in range(11)])
    after = SnapshotFactory(env=env)

    results = engine.materialise_many([before, bad, after], now=now)

    assert [r.outcome for r in results] == [Outcome.CREATED, Outcome.INVALID, Outcome.CREATED]
    assert "at most 10 tags" in results[1].reason
    assert set(TaskRun.objects.values_list("id", flat=True)) == {before.id, after.id}


def test_materialise_many_marks_snapshot_of_unknown_environment_invalid(env, now):
    good = SnapshotFactory(env=env)
    orphan = SnapshotFactory(env=env, env_id=2_000_000_000)

    results = engine.materialise_many([orphan, good], now=now)

    assert results[0].outcome == Outcome.INVALID
    assert "does not exist" in results[0].reason
    assert results[1].outcome == Outcome.CREATED


# Each of these is a value Postgres rejects; unchecked, one of them aborted the COPY and the whole batch.
POISON = {
    "machine too long": {"machine": "m" * 17},
    "queue too long": {"queue": "q" * 129},
    "run id too long": {"id": "run_" + "x" * 40},
    "NUL in payload": {"payload": '{"a":"\x00"}'},
    "NUL in metadata": {"metadata": {"note": "a\x00b"}},
    "NaN in metadata": {"metadata": {"ratio": float("nan")}},
    "lone surrogate in tag": {"tags": ["ok", "\ud800"]},
    "priority beyond int4": {"priority": 2**31},
    "max attempts beyond int4": {"max_attempts": 2**40},
}


@pytest.mark.parametrize("poison", POISON.values(), ids=POISON.keys())
def test_materialise_many_marks_a_value_postgres_cannot_store_invalid_without_losing_the_batch(env, now, poison):
    before, after = SnapshotFactory(env=env), SnapshotFactory(env=env)
    bad = SnapshotFactory(env=env, **poison)

    results = engine.materialise_many([before, bad, after], now=now)

    assert [r.outcome for r in results] == [Outcome.CREATED, Outcome.INVALID, Outcome.CREATED]
    assert results[1].reason
    assert set(TaskRun.objects.values_list("id", flat=True)) == {before.id, after.id}


def _validation_variants() -> list[Snapshot]:
    """A valid snapshot with every optional field set, and each field in turn at and past its limits."""
    base = Snapshot(
        id="run_0000000000aaaaaaaaaaaaaaa", env_id=7, org_id=3, task_identifier="t" * 128, created_at=now_ms_precision(),
        payload="p", metadata={"a": [1, "x"]}, tags=["a" * 128], idempotency_key="k" * 2048, idempotency_key_user="u",
        queue="q", concurrency_key="c", ttl="1h", max_attempts=0, max_duration=0, machine="small-1x", priority=0,
        batch_id="batch_1", batch_index=0, parent_run_id="run_p", root_run_id="run_r", depth=0, trace_id="t",
        span_id="s",
    )  # fmt: skip
    texts = [attr for attr in rows._MAX_LENGTH if getattr(base, attr) is not None]
    changes: list[dict] = [{}, {"task_identifier": ""}, {"tags": ["a"] * 10}, {"tags": ["a" * 129]}]
    changes += [{"tags": [str(i) for i in range(11)]}, {"tags": ["ok", "\ud800"]}, {"tags": ["\x00"]}]
    changes += [{"idempotency_key": "k" * 2049}, {"batch_id": None}, {"batch_index": None}, {"metadata": None}]
    changes += [{"metadata": {"x": float("inf")}}, {"metadata": ["\x00"]}, {"metadata": {"\ud800": 1}}]
    for attr in rows._INT_ATTRS:
        changes += [{attr: v} for v in (-1, -(2**31), -(2**31) - 1, 2**31 - 1, 2**31)]
    for attr in texts:
        limit = rows._MAX_LENGTH[attr] or 10
        changes += [{attr: "x" * limit}, {attr: "x" * (limit + 1)}, {attr: "a\x00b"}, {attr: "é\udc00"}, {attr: "日本"}]
    changes += [{"queue": "q" * 129, "payload": "\x00"}, {"payload": "\ud800", "machine": "m" * 17}]
    return [base.replace(**c) for c in changes]


@pytest.mark.parametrize("array_oid", [1015, 1009])
@pytest.mark.parametrize("tags", [[], ["a"], ["user_1", "tenant_9"], ["日本", "Zoë 🚀", ""], ["x" * 128] * 10])
def test_the_tags_dumper_writes_the_bytes_psycopg_writes(array_oid, tags):
    """The COPY's own tags dumper (``staging._tags_dumper``) is only a faster psycopg: same bytes, each type."""
    import psycopg
    from psycopg import adapt, pq

    ours = staging._tags_dumper(array_oid)(list, None)
    theirs = psycopg.adapters.get_dumper_by_oid(array_oid, pq.Format.BINARY)(list, adapt.Transformer())

    assert bytes(ours.dump(tags)) == bytes(theirs.dump(tags))


@pytest.mark.parametrize("snapshot", _validation_variants())
def test_the_quick_validation_agrees_with_the_check_of_record(snapshot):
    """``validate`` passes a snapshot on ``_plainly_valid``'s word only if ``_why_invalid`` finds nothing,
    and otherwise answers ``_why_invalid``'s reason."""
    tags = engine.normalise_tags(snapshot.tags)
    expected = rows._why_invalid(snapshot, tags)

    assert rows._plainly_valid(snapshot, tags) == (expected is None)
    assert engine.validate(snapshot) == expected


@pytest.mark.parametrize("poison", [p for name, p in POISON.items() if name != "run id too long"])
def test_failure_row_is_written_for_a_snapshot_postgres_cannot_store(env, now, poison):
    bad = SnapshotFactory(env=env, **poison)

    result = engine.create_failed_run(bad, "snapshot cannot be stored", now=now, emit_event=False)

    assert result.outcome == Outcome.CREATED
    assert TaskRun.objects.get(id=bad.id).status == RunStatus.SYSTEM_FAILURE


def test_failure_row_is_refused_for_a_run_id_that_cannot_be_stored(env, now):
    with pytest.raises(InvalidRun, match="cannot be stored"):
        engine.create_failed_run(SnapshotFactory(env=env, id="run_" + "x" * 40), "bad", now=now)


@pytest.mark.parametrize("fresh", [False, True], ids=["staged", "fresh-hint-wrong"])
def test_materialise_many_twice_with_the_same_snapshots_is_a_no_op_the_second_time(env, now, events, fresh):
    snapshots = [SnapshotFactory(env=env, idempotency_key=f"k{i}" if i % 2 else None) for i in range(20)]
    engine.materialise_many(snapshots, now=now, fresh=True)
    rows_before = list(TaskRun.objects.order_by("id").values())
    events.created.clear()

    results = engine.materialise_many(snapshots, now=now + timedelta(minutes=1), fresh=fresh)

    assert [r.outcome for r in results] == [Outcome.EXISTED] * 20
    assert list(TaskRun.objects.order_by("id").values()) == rows_before
    assert events.created == []


def test_fresh_materialise_many_writes_the_rows_the_staged_path_writes_and_stages_nothing(env, now, events):
    """The no-conflict path (one plain COPY): every row exactly as the staged path writes it."""
    snapshots = [SnapshotFactory(env=env, idempotency_key=f"f{i}" if i % 3 == 0 else None) for i in range(50)]

    results = engine.materialise_many(snapshots, now=now, fresh=True)
    fresh_rows = list(TaskRun.objects.order_by("id").values())
    with connection.cursor() as cur:
        cur.execute("SELECT to_regclass('pg_temp.mollifier_stage') IS NULL")
        never_staged = cur.fetchone()[0]
    TaskRun.objects.all().delete()
    engine.materialise_many(snapshots, now=now)
    staged_rows = list(TaskRun.objects.order_by("id").values())

    assert [r.outcome for r in results] == [Outcome.CREATED] * 50
    assert events.created == [s.id for s in snapshots] * 2
    assert fresh_rows == staged_rows
    assert never_staged


def test_run_created_fires_once_per_created_row_and_not_for_existed(env, now, events):
    already = SnapshotFactory(env=env)
    engine.trigger(already, now=now)
    events.created.clear()
    new_one, new_two = SnapshotFactory(env=env), SnapshotFactory(env=env)

    engine.materialise_many([already, new_one, new_one, new_two], now=now)

    assert events.created == [new_one.id, new_two.id]


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
def test_two_concurrent_materialise_many_calls_create_each_row_exactly_once(now):
    env = EnvironmentFactory()
    snapshots = [SnapshotFactory(env=env, idempotency_key=f"k{i}" if i % 3 == 0 else None) for i in range(1000)]
    start = threading.Barrier(2)
    results: dict[int, list[engine.Result]] = {}
    errors: list[BaseException] = []

    def drain(slot: int) -> None:
        try:
            start.wait()
            results[slot] = engine.materialise_many(snapshots, now=now)
        except BaseException as exc:  # surfaced below; a thread's exception is otherwise lost
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=drain, args=(slot,)) for slot in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert TaskRun.objects.filter(env=env).count() == 1000
    for i, s in enumerate(snapshots):
        pair = {results[0][i].outcome, results[1][i].outcome}
        assert pair == {Outcome.CREATED, Outcome.EXISTED}, (i, s.id, pair)


# ---------------------------------------------------------------------------------- cancelled runs


def test_create_cancelled_run_writes_canceled_row_and_fires_run_cancelled(env, now, events):
    snapshot = SnapshotFactory(env=env, created_at=now - timedelta(minutes=1))
    cancelled_at = now - timedelta(seconds=10)

    result = engine.create_cancelled_run(snapshot, cancelled_at, "user asked", now=now)

    assert result.outcome == Outcome.CREATED
    row = TaskRun.objects.get(id=snapshot.id)
    assert row.status == RunStatus.CANCELED
    assert row.completed_at == cancelled_at
    assert row.error == {"type": "STRING_ERROR", "raw": "user asked"}
    assert row.created_at == snapshot.created_at
    assert events.cancelled == [(snapshot.id, "user asked")]
    assert events.created == []


def test_create_cancelled_run_again_reports_existed_without_a_second_event(env, now, events):
    snapshot = SnapshotFactory(env=env)
    engine.create_cancelled_run(snapshot, now, "user asked", now=now)

    again = engine.create_cancelled_run(snapshot, now, "user asked", now=now)

    assert again.outcome == Outcome.EXISTED
    assert TaskRun.objects.filter(id=snapshot.id).count() == 1
    assert len(events.cancelled) == 1


def test_create_cancelled_run_on_a_live_row_raises_cancel_conflict(env, now, events):
    snapshot = SnapshotFactory(env=env)
    engine.trigger(snapshot, now=now)

    with pytest.raises(CancelConflict) as caught:
        engine.create_cancelled_run(snapshot, now, "user asked", now=now)

    assert (caught.value.run_id, caught.value.status) == (snapshot.id, RunStatus.PENDING)
    assert TaskRun.objects.get(id=snapshot.id).status == RunStatus.PENDING
    assert events.cancelled == []


def test_create_cancelled_run_with_emit_event_false_sends_no_signal(env, now, events):
    snapshot = SnapshotFactory(env=env)

    engine.create_cancelled_run(snapshot, now, "user asked", emit_event=False, now=now)

    assert TaskRun.objects.get(id=snapshot.id).status == RunStatus.CANCELED
    assert events.cancelled == []


def test_create_cancelled_run_keeps_the_row_when_another_run_holds_its_idempotency_key(env, now):
    holder = SnapshotFactory(env=env, idempotency_key="k1")
    engine.trigger(holder, now=now)
    snapshot = SnapshotFactory(env=env, idempotency_key="k1")

    result = engine.create_cancelled_run(snapshot, now, "user asked", now=now)

    assert result.outcome == Outcome.CREATED
    row = TaskRun.objects.get(id=snapshot.id)
    assert (row.status, row.idempotency_key) == (RunStatus.CANCELED, None)


def test_create_cancelled_run_for_a_deleted_environment_raises_invalid_run(env, now):
    snapshot = SnapshotFactory(env=env)
    env.delete()

    with pytest.raises(InvalidRun, match="does not exist"):
        engine.create_cancelled_run(snapshot, now, "user asked", now=now)


# ------------------------------------------------------------------------------------- failed runs


def test_create_failed_run_keeps_the_batch_link(env, now, events):
    batch = BatchFactory(env=env, run_count=3)
    snapshot = SnapshotFactory(env=env, batch_id=batch.id, batch_index=2)

    result = engine.create_failed_run(snapshot, "Mollifier drainer terminal failure: boom", now=now)

    assert result.outcome == Outcome.CREATED
    row = TaskRun.objects.get(id=snapshot.id)
    assert row.status == RunStatus.SYSTEM_FAILURE
    assert (row.batch_id, row.batch_index) == (batch.id, 2)
    assert row.error == {"type": "STRING_ERROR", "raw": "Mollifier drainer terminal failure: boom"}
    assert row.completed_at == now
    assert events.failed == [(snapshot.id, "Mollifier drainer terminal failure: boom")]


def test_create_failed_run_takes_batch_from_overrides_when_the_snapshot_was_unreadable(env, now):
    batch = BatchFactory(env=env, run_count=3)
    placeholder = SnapshotFactory(env=env, task_identifier="unknown", payload=None, tags=[])

    engine.create_failed_run(placeholder, "unreadable snapshot", batch_id=batch.id, batch_index=1, now=now)

    row = TaskRun.objects.get(id=placeholder.id)
    assert (row.status, row.batch_id, row.batch_index) == (RunStatus.SYSTEM_FAILURE, batch.id, 1)


def test_create_failed_run_is_idempotent_on_run_id(env, now, events):
    snapshot = SnapshotFactory(env=env)
    engine.create_failed_run(snapshot, "boom", now=now)

    again = engine.create_failed_run(snapshot, "boom", now=now + timedelta(seconds=5))

    assert again.outcome == Outcome.EXISTED
    assert TaskRun.objects.filter(id=snapshot.id).count() == 1
    assert TaskRun.objects.get(id=snapshot.id).completed_at == now
    assert len(events.failed) == 1


def test_create_failed_run_without_event_still_records_the_alert(
    env, now, events, celery_eager, django_capture_on_commit_callbacks
):
    snapshot = SnapshotFactory(env=env)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        engine.create_failed_run(snapshot, "boom", emit_event=False, now=now)

    assert len(callbacks) == 1
    assert events.failed == []
    alert = RunAlert.objects.get(run_id=snapshot.id)
    assert (alert.channel, alert.detail) == (RunAlert.Channel.LOG, "boom")


def test_create_failed_run_for_a_deleted_environment_raises_invalid_run(env, now):
    snapshot = SnapshotFactory(env=env)
    env.delete()

    with pytest.raises(InvalidRun, match="does not exist"):
        engine.create_failed_run(snapshot, "boom", now=now)


def test_create_failed_run_writes_a_row_even_with_eleven_tags(env, now):
    snapshot = SnapshotFactory(env=env, tags=[f"t{i}" for i in range(11)])

    result = engine.create_failed_run(snapshot, "too many tags", now=now)

    assert result.outcome == Outcome.CREATED
    assert TaskRun.objects.get(id=snapshot.id).tags == [f"t{i}" for i in range(10)]


# -------------------------------------------------------------------------------------- cancel_run


def test_cancel_run_cancels_a_live_run(env, now, events):
    snapshot = SnapshotFactory(env=env)
    engine.trigger(snapshot, now=now)
    at = now + timedelta(seconds=3)

    outcome = engine.cancel_run(snapshot.id, "user asked", at)

    assert outcome == CancelOutcome.CANCELLED
    row = TaskRun.objects.get(id=snapshot.id)
    assert (row.status, row.completed_at) == (RunStatus.CANCELED, at)
    assert row.error == {"type": "STRING_ERROR", "raw": "user asked"}
    assert events.cancelled == [(snapshot.id, "user asked")]


def test_cancel_run_leaves_a_terminal_run_unchanged(env, now, events):
    snapshot = SnapshotFactory(env=env)
    engine.create_failed_run(snapshot, "boom", now=now)
    before = TaskRun.objects.values().get(id=snapshot.id)

    outcome = engine.cancel_run(snapshot.id, "user asked", now + timedelta(seconds=3))

    assert outcome == CancelOutcome.ALREADY_TERMINAL
    assert TaskRun.objects.values().get(id=snapshot.id) == before
    assert events.cancelled == []


def test_cancel_run_of_unknown_run_reports_not_found():
    assert engine.cancel_run("run_doesnotexist0000000000000", "x", now_ms_precision()) == CancelOutcome.NOT_FOUND


# ---------------------------------------------------------------------------------- settle_batches


def _children(env, batch, n: int) -> list[Snapshot]:
    return [SnapshotFactory(env=env, batch_id=batch.id, batch_index=i) for i in range(n)]


@pytest.mark.parametrize("fresh", [False, True], ids=["staged", "fresh"])
def test_sealed_batch_completes_when_every_child_has_a_row(env, now, fresh):
    batch = BatchFactory(env=env, run_count=2, sealed=True)

    engine.materialise_many(_children(env, batch, 2), now=now, fresh=fresh)

    batch.refresh_from_db()
    assert batch.status == BatchStatus.COMPLETED
    assert batch.completed_at == now


def test_sealed_batch_with_a_system_failure_child_is_partial_failed(env, now):
    batch = BatchFactory(env=env, run_count=2, sealed=True)
    ok, failed = _children(env, batch, 2)

    engine.trigger(ok, now=now)
    engine.create_failed_run(failed, "boom", now=now, emit_event=False)

    batch.refresh_from_db()
    assert batch.status == BatchStatus.PARTIAL_FAILED


def test_unsealed_batch_stays_pending_with_every_child_written(env, now):
    batch = BatchFactory(env=env, run_count=2, sealed=False)
    engine.materialise_many(_children(env, batch, 2), now=now)

    changed = engine.settle_batches([batch.id], now=now)

    batch.refresh_from_db()
    assert (changed, batch.status) == (0, BatchStatus.PENDING)


def test_sealed_batch_stays_pending_while_a_child_is_missing(env, now):
    batch = BatchFactory(env=env, run_count=2, sealed=True)
    engine.trigger(_children(env, batch, 1)[0], now=now)

    changed = engine.settle_batches([batch.id], now=now)

    batch.refresh_from_db()
    assert (changed, batch.status) == (0, BatchStatus.PENDING)
