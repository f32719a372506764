"""The run engine (docs/architecture.md#run-engine): the only writer of TaskRun rows.

Every function builds rows with ``runs.rows.build`` — one code path whether a run is written at trigger time,
in bulk by the drain, or as a CANCELED / SYSTEM_FAILURE row — and every insert (``runs.staging``, which only
the engine uses) is ``ON CONFLICT DO NOTHING`` on the run id, so a replay after a crash is a no-op rather than
a duplicate. What a result means, the batches it settles and the events it sends are decided here.

Outcomes are values, not exceptions, where "someone got there first" is the expected race
(``Outcome.EXISTED``, ``Outcome.IDEMPOTENCY_CLASH``). Exceptions are kept for what the caller must handle
differently: ``CancelConflict`` (a live row exists; cancel it instead) and ``InvalidRun`` (a snapshot
that can never become a row).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.dispatch import Signal
from django.utils import timezone
from psycopg.types.json import Jsonb

from runs import rows, staging
from runs.models import MAX_TAGS, TERMINAL_STATUSES, BatchItem, BatchStatus, BatchTaskRun, RunStatus, TaskRun
from runs.rows import InvalidRun as InvalidRun  # the engine raises it: callers catch engine.InvalidRun
from runs.rows import validate as validate  # the trigger service asks engine.validate before buffering
from runs.signals import run_cancelled, run_created, run_failed, run_failure_committed
from runs.snapshot import Snapshot, normalise_tags

log = logging.getLogger(__name__)

FAILURE_PREFIX = "Mollifier drainer terminal failure:"
# A key whose run ended like this may be reused: the next trigger makes a new run (docs/api.md#trigger-a-task).
REUSABLE_KEY_STATUSES = frozenset(
    {
        RunStatus.COMPLETED_WITH_ERRORS,
        RunStatus.SYSTEM_FAILURE,
        RunStatus.CRASHED,
        RunStatus.EXPIRED,
        RunStatus.TIMED_OUT,
    }
)

_TABLE = TaskRun._meta.db_table
_ITEMS = BatchItem._meta.db_table
_BATCHES = BatchTaskRun._meta.db_table


class Outcome(StrEnum):
    CREATED = "created"
    EXISTED = "existed"  # a row with this run id was already there: replay is a no-op
    IDEMPOTENCY_CLASH = "idempotency_clash"  # another run holds (env, task, idempotency key)
    INVALID = "invalid"  # the snapshot can never become a row; ``reason`` says why


@dataclass(frozen=True, slots=True)
class Result:
    run_id: str
    outcome: Outcome
    existing_run_id: str | None = None  # for IDEMPOTENCY_CLASH: the run holding the key
    reason: str | None = None  # for INVALID


class CancelConflict(Exception):
    """A row with this id exists and is not CANCELED: the caller must cancel the live run instead."""

    def __init__(self, run_id: str, status: str):
        super().__init__(f"run {run_id} already exists with status {status}")
        self.run_id = run_id
        self.status = status


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    ALREADY_TERMINAL = "already_terminal"
    NOT_FOUND = "not_found"


def _status_of(run_id: str) -> str | None:
    return TaskRun.objects.filter(id=run_id).values_list("status", flat=True).first()


def _holder_of_key(s: Snapshot) -> str | None:
    return (
        TaskRun.objects.filter(env_id=s.env_id, task_identifier=s.task_identifier, idempotency_key=s.idempotency_key)
        .values_list("id", flat=True)
        .first()
    )


# ------------------------------------------------------------------------------------------ public


def trigger(snapshot: Snapshot, *, now: datetime | None = None, buffered: bool = False) -> Result:
    """Insert the run's row (PENDING, or DELAYED while ``delay_until`` is ahead) and emit ``run_created``.

    Returns CREATED; EXISTED when a row with this id is already there (a replay); IDEMPOTENCY_CLASH with
    ``existing_run_id`` when another run holds the idempotency key (the unique index is the backstop
    behind the trigger service's Redis claim). Raises ``InvalidRun`` for a snapshot that cannot be a row.
    """
    now = now or timezone.now()
    reason = validate(snapshot) or rows.missing_references([snapshot]).get(snapshot.id)
    if reason:
        raise InvalidRun(reason)
    with transaction.atomic():
        created = staging.insert_one(rows.build(snapshot, now=now, buffered=buffered))
        if created and snapshot.batch_id:
            settle_batches([snapshot.batch_id], now=now)
    if created:
        run_created.send(sender=TaskRun, run_id=snapshot.id, snapshot=snapshot, buffered=buffered)
        return Result(snapshot.id, Outcome.CREATED)
    if _status_of(snapshot.id) is not None:
        return Result(snapshot.id, Outcome.EXISTED)
    return Result(snapshot.id, Outcome.IDEMPOTENCY_CLASH, existing_run_id=_holder_of_key(snapshot))


def materialise_many(
    snapshots: Sequence[Snapshot],
    *,
    now: datetime | None = None,
    buffered: bool = True,
    fresh: bool = False,
    cancelled: Mapping[str, tuple[datetime, str]] | None = None,
) -> list[Result]:
    """The drain's bulk form of ``trigger``: one COPY + one ``INSERT … ON CONFLICT DO NOTHING`` in one
    transaction. Returns one ``Result`` per snapshot, in input order.

    Steps:
    1. Validate each snapshot and check its env/org/batch exist (two queries for the whole batch);
       failures are INVALID and are not inserted, so one bad snapshot cannot abort the rest.
    2. COPY the valid rows into a session-local staging table, then insert them in input order with
       ``ON CONFLICT DO NOTHING RETURNING id``: the first of several snapshots with one id or one
       idempotency key wins.
    3. Classify what was not inserted: its id exists → EXISTED, else IDEMPOTENCY_CLASH (with the holder).
    4. Settle the batches whose children were written; after commit, emit ``run_created`` per new row.

    ``fresh=True`` is the caller's word that no row can hold these ids or keys yet (the drain's first
    attempt of every entry: docs/architecture.md#drain-throughput). Step 2 is then one plain COPY into
    the table — half the Postgres work. The word is a hint, never trusted: if a unique constraint
    rejects the COPY (a row exists after all, or two snapshots share an id or key), that transaction
    rolls back whole and the batch is written the staging way, with the same results as without it.

    ``cancelled`` (run id → (cancelled at, reason)): those runs are written as CANCELED rows and emit
    ``run_cancelled`` instead — the drain's bulk form of ``create_cancelled_run`` for entries cancelled
    while buffered (a bulk cancel's 100k runs, docs/architecture.md#bulk-actions). Whatever is not CREATED
    (an existing id, a held key, an invalid snapshot) the caller resolves with ``create_cancelled_run``.
    """
    flags = cancelled or {}
    now = now or timezone.now()
    results: list[Result | None] = [None] * len(snapshots)
    missing = rows.missing_references(snapshots) if snapshots else {}
    valid: list[tuple[int, Snapshot]] = []
    built: list[tuple[int, Snapshot, tuple]] = []
    for i, s in enumerate(snapshots):
        tags = normalise_tags(s.tags)
        reason = validate(s, tags=tags) or missing.get(s.id)
        if reason:
            results[i] = Result(s.id, Outcome.INVALID, reason=reason)
        else:
            valid.append((i, s))
            built.append(
                (i, s, rows.build(s, now=now, buffered=buffered, tags=tags, **rows.cancelled_fields(flags.get(s.id))))
            )
    created_ids: set[str] = set()
    existing_ids: set[str] = set()
    holders: dict[tuple[int, str, str], str] = {}
    if valid:

        def settle(cur: Any, created: Sequence[Snapshot]) -> None:
            _settle_created(cur, created, now=now)

        written = fresh and staging.copy_fresh(built, on_written=settle)
        if not written:
            created_ids, existing_ids, holders = staging.copy_staged(built, on_written=settle)
        first_seen: set[str] = set()
        for i, s in valid:
            if written:  # the COPY took every row, and it could not have taken one id twice
                results[i] = Result(s.id, Outcome.CREATED)
            elif s.id in created_ids and s.id not in first_seen:
                first_seen.add(s.id)
                results[i] = Result(s.id, Outcome.CREATED)
            elif s.id in existing_ids or s.id in created_ids:
                results[i] = Result(s.id, Outcome.EXISTED)
            else:
                key = (s.env_id, s.task_identifier, s.idempotency_key or "")
                results[i] = Result(s.id, Outcome.IDEMPOTENCY_CLASH, existing_run_id=holders.get(key))
        if _listened(run_created, run_cancelled):
            for i, s in valid:
                if results[i].outcome is Outcome.CREATED:  # type: ignore[union-attr]
                    if s.id in flags:
                        run_cancelled.send(sender=TaskRun, run_id=s.id, reason=flags[s.id][1])
                    else:
                        run_created.send(sender=TaskRun, run_id=s.id, snapshot=s, buffered=buffered)
    return results  # type: ignore[return-value]


def _listened(*signals: Signal) -> bool:
    """Whether any of ``signals`` has a receiver for ``TaskRun``: sending to none, once per row, costs a
    round of the drain about a millisecond for nothing."""
    return any(signal.has_listeners(TaskRun) for signal in signals)


def _settle_created(cur: Any, created: Sequence[Snapshot], *, now: datetime) -> None:
    """Settle the batches whose children were just written. A created run may also answer another batch's
    index — only through an idempotency hit, so only runs with a key can: look those up (one indexed
    query; most rounds have none)."""
    batch_ids = {s.batch_id for s in created if s.batch_id}
    keyed = [s.id for s in created if s.idempotency_key]
    if keyed:
        cur.execute(f"SELECT DISTINCT batch_id FROM {_ITEMS} WHERE run_id = ANY(%s)", [keyed])
        batch_ids |= {row[0] for row in cur.fetchall()}
    if batch_ids:
        settle_batches(batch_ids, now=now)


def create_cancelled_run(
    snapshot: Snapshot,
    cancelled_at: datetime,
    reason: str,
    *,
    emit_event: bool = True,
    now: datetime | None = None,
    buffered: bool = True,
) -> Result:
    """Insert a CANCELED row straight from the snapshot (it never queues).

    CREATED, or EXISTED when a CANCELED row with this id is there already (no second event). Raises
    ``CancelConflict`` when the id exists with another status — the caller then ``cancel_run``s it.
    If another run holds the snapshot's idempotency key, the CANCELED row is written without the key:
    the key belongs to the live run, and the cancelled run must still exist. Raises ``InvalidRun`` when
    no row can be written (its env is gone): the caller dead-letters the entry.
    """
    now = now or timezone.now()
    error = {"type": "STRING_ERROR", "raw": reason}
    s = rows.terminal_snapshot(snapshot)
    with transaction.atomic():
        created = staging.insert_one(
            rows.build(s, now=now, buffered=buffered, status=RunStatus.CANCELED, error=error, completed_at=cancelled_at)
        )
        if not created:
            status = _status_of(s.id)
            if status == RunStatus.CANCELED:
                return Result(s.id, Outcome.EXISTED)
            if status is not None:
                raise CancelConflict(s.id, status)
            created = staging.insert_one(
                rows.build(s, now=now, buffered=buffered, status=RunStatus.CANCELED, error=error,
                     completed_at=cancelled_at, keep_idempotency_key=False)
            )  # fmt: skip
        if s.batch_id:
            settle_batches([s.batch_id], now=now)
    if emit_event:
        run_cancelled.send(sender=TaskRun, run_id=s.id, reason=reason)
    return Result(s.id, Outcome.CREATED)


def create_failed_run(
    snapshot: Snapshot,
    error: str,
    *,
    batch_id: str | None = None,
    batch_index: int | None = None,
    emit_event: bool = True,
    now: datetime | None = None,
    buffered: bool = True,
) -> Result:
    """Insert a SYSTEM_FAILURE row for a run that can never be created normally.

    The batch link is kept (``batch_id``/``batch_index`` override the snapshot's when the snapshot itself
    was unreadable) so a batch never waits forever on a child that failed to materialise. Idempotent on
    run id (EXISTED, no second alert). The alert is enqueued after commit even when ``emit_event`` is
    False. Raises ``InvalidRun`` when not even a failure row can be written (its env is gone): the
    caller dead-letters the entry.
    """
    now = now or timezone.now()
    if batch_id is not None:
        snapshot = snapshot.replace(batch_id=batch_id, batch_index=batch_index)
    s = rows.terminal_snapshot(snapshot)
    payload = {"type": "STRING_ERROR", "raw": error}
    with transaction.atomic():
        row = rows.build(
            s, now=now, buffered=buffered, status=RunStatus.SYSTEM_FAILURE, error=payload, completed_at=now
        )
        created = staging.insert_one(row)
        if not created and _status_of(s.id) is None:
            created = staging.insert_one(
                rows.build(s, now=now, buffered=buffered, status=RunStatus.SYSTEM_FAILURE, error=payload,
                     completed_at=now, keep_idempotency_key=False)
            )  # fmt: skip
        if not created:
            return Result(s.id, Outcome.EXISTED)
        if s.batch_id:
            settle_batches([s.batch_id], now=now)
        transaction.on_commit(lambda: run_failure_committed.send(sender=TaskRun, run_id=s.id))
    if emit_event:
        run_failed.send(sender=TaskRun, run_id=s.id, error=error)
    return Result(s.id, Outcome.CREATED)


def cancel_run(run_id: str, reason: str, at: datetime) -> CancelOutcome:
    """Cancel a live run: any non-terminal status → CANCELED. Terminal runs are left as they are."""
    error = {"type": "STRING_ERROR", "raw": reason}
    updated = (
        TaskRun.objects.filter(id=run_id)
        .exclude(status__in=TERMINAL_STATUSES)
        .update(status=RunStatus.CANCELED, completed_at=at, error=error, updated_at=at)
    )
    if updated:
        run_cancelled.send(sender=TaskRun, run_id=run_id, reason=reason)
        return CancelOutcome.CANCELLED
    return CancelOutcome.ALREADY_TERMINAL if _status_of(run_id) is not None else CancelOutcome.NOT_FOUND


def settle_batches(batch_ids: Sequence[str] | set[str], *, now: datetime) -> int:
    """Move sealed batches whose every index has a row to COMPLETED (PARTIAL_FAILED if any child is a
    SYSTEM_FAILURE). Returns how many batches changed. One statement; safe to call repeatedly."""
    if not batch_ids:
        return 0
    with connection.cursor() as cur:
        cur.execute(
            f"""
            UPDATE {_BATCHES} b
               SET status = CASE WHEN c.failed > 0 THEN %s ELSE %s END, completed_at = %s, updated_at = %s
              FROM (SELECT batch_id, count(DISTINCT idx) AS done, count(*) FILTER (WHERE status = %s) AS failed
                      FROM (SELECT batch_id, batch_index AS idx, status FROM {_TABLE} WHERE batch_id = ANY(%s)
                            UNION
                            -- an index answered by an idempotency hit is another run: found via BatchItem
                            SELECT i.batch_id, i.index, t.status FROM {_ITEMS} i JOIN {_TABLE} t ON t.id = i.run_id
                             WHERE i.batch_id = ANY(%s)) children
                     GROUP BY batch_id) c
             WHERE b.id = c.batch_id AND b.sealed AND c.done >= b.run_count AND b.status IN (%s, %s)
            """,
            (
                BatchStatus.PARTIAL_FAILED, BatchStatus.COMPLETED, now, now, RunStatus.SYSTEM_FAILURE,
                list(batch_ids), list(batch_ids), BatchStatus.PENDING, BatchStatus.PROCESSING,
            ),
        )  # fmt: skip
        return cur.rowcount


@dataclass(frozen=True, slots=True)
class KeyHolder:
    run_id: str
    reusable: bool  # its run ended in REUSABLE_KEY_STATUSES or its key expired: a new run may take the key


# At most one row: the unique index on (env, task_identifier, idempotency_key) answers it.
_HOLDER_SQL = (
    f"SELECT id, status, idempotency_key_expires_at FROM {_TABLE} "
    "WHERE env_id = %s AND task_identifier = %s AND idempotency_key = %s"
)


def idempotency_holder(env_id: int, task_identifier: str, key: str, *, now: datetime) -> KeyHolder | None:
    """The row holding ``key`` (one lookup on the unique index), or ``None``: asked when no Redis claim holds a
    key a trigger is about to buffer (runs.trigger, docs/architecture.md#idempotency). Plain SQL: on a keyed
    buffered trigger, the ORM's query building was 0.9 ms of the web worker's CPU, 5× the query itself
    (docs/architecture.md#trigger-path)."""
    row = _fetchone_as_own_health_check(_HOLDER_SQL, [env_id, task_identifier, key])
    if row is None:
        return None
    run_id, status, expires_at = row
    return KeyHolder(run_id, status in REUSABLE_KEY_STATUSES or (expires_at is not None and expires_at <= now))


def _fetchone_as_own_health_check(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    """One read outside a transaction, used as the connection's health check: Django's ``CONN_HEALTH_CHECKS``
    would first send a ``SELECT 1`` (a round trip) on a connection reused from an earlier request. Instead the
    read goes straight out, and if the connection turns out broken (Postgres restarted, backend killed) it is
    dropped and the read sent once more on a new one: what the health check would have done, one round trip
    cheaper when the connection is fine (docs/architecture.md#trigger-path)."""
    # health_check_done: Django's own flag (BaseDatabaseWrapper, 4.1+), not in django-stubs.
    done = connection.health_check_done  # type: ignore[attr-defined]
    unchecked = connection.connection is not None and not done and not connection.in_atomic_block
    if unchecked:
        connection.health_check_done = True  # type: ignore[attr-defined]  # this read is the check
    try:
        return _fetchone_prepared(sql, params)
    except DatabaseError:
        raw = connection.connection
        if not (unchecked and (raw is None or raw.closed or raw.broken)):
            raise
        log.info("reused database connection was broken; reconnecting once")
        discard_connection()
    return _fetchone_prepared(sql, params)


def _fetchone_prepared(sql: str, params: Sequence[Any]) -> tuple[Any, ...] | None:
    """``sql`` as a prepared statement of this connection (psycopg's server-side binding, ``prepare=True``):
    Postgres parses and plans it once per connection, not on every call as through Django's client-side-binding
    cursor. 500 lookups alternated, median of 7: 353 → 260 µs a lookup, 104 → 93 µs of the client's CPU
    (docs/architecture.md#lookup-first). Errors are Django's, as from any cursor."""
    connection.close_if_health_check_failed()  # a no-op unless the caller left the check to Django
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cur:
        cur.execute(sql, params, prepare=True)
        return cur.fetchone()


def release_idempotency_key(
    env_id: int, task_identifier: str, key: str, *, now: datetime, statuses: frozenset[str] | None = None
) -> list[str]:
    """Clear ``key`` from the row holding it, so a new run may take it. Returns the ids cleared.

    With ``statuses`` the key is released only if it has expired or its run ended in one of them (a
    failed run's key is reusable, docs/api.md#trigger-a-task); without, unconditionally (the reset endpoint).
    """
    holders = TaskRun.objects.filter(env_id=env_id, task_identifier=task_identifier, idempotency_key=key)
    if statuses is not None:
        holders = holders.filter(Q(status__in=statuses) | Q(idempotency_key_expires_at__lte=now))
    with transaction.atomic():
        ids = list(holders.select_for_update().values_list("id", flat=True))
        if ids:
            TaskRun.objects.filter(id__in=ids).update(idempotency_key=None, updated_at=now)
    return ids


class TagsOutcome(StrEnum):
    ADDED = "added"
    TOO_MANY = "too_many"
    NOT_FOUND = "not_found"


def add_tags(run_id: str, env_id: int, tags: Sequence[str], *, now: datetime) -> tuple[TagsOutcome, int]:
    """Append ``tags`` to a run's row, de-duplicated, at most ``MAX_TAGS`` in all.

    Returns (ADDED, how many were new), (TOO_MANY, the count it would have reached) or (NOT_FOUND, 0).
    """
    with transaction.atomic():
        row = TaskRun.objects.select_for_update().filter(id=run_id, env_id=env_id).values_list("tags", flat=True)
        current = row.first()
        if current is None:
            return TagsOutcome.NOT_FOUND, 0
        merged = normalise_tags([*current, *tags])
        if len(merged) > MAX_TAGS:
            return TagsOutcome.TOO_MANY, len(merged)
        added = len(merged) - len(current)
        if added:
            TaskRun.objects.filter(id=run_id).update(tags=merged, updated_at=now)
    return TagsOutcome.ADDED, added


@dataclass(frozen=True, slots=True)
class Overrides:
    """What a buffered run's entry changed after its trigger (``runs.overrides``), to carry onto a row that
    another drainer wrote: tags to append, the rescheduled delay, the replaced metadata (None: unchanged)."""

    tags: Sequence[str] = ()
    delay_until: datetime | None = None
    metadata: dict[str, Any] | None = None


def apply_overrides(run_id: str, env_id: int, changes: Overrides, *, now: datetime) -> list[str]:
    """Carry an entry's overrides onto a row another drainer wrote without them (the EXISTED race,
    drainer/drain.py crash point 3). Merges, never clobbers: tags are appended (de-duplicated, at most
    ``MAX_TAGS``); the delay and the metadata replace the row's only while the row is as its writer left it
    (``updated_at`` still equals ``materialised_at``) — a row changed since got that change after the
    entry's, since a run is mutated in the buffer only while no row of it is visible — and a delay only
    while the row is DELAYED (as ``reschedule_run``). One transaction under the row lock. Returns the names
    of the overrides it could not apply ("tags" past the limit, "delay", "metadata"); a missing row: all."""
    skipped: list[str] = []
    with transaction.atomic():
        row = (
            TaskRun.objects.select_for_update()
            .filter(id=run_id, env_id=env_id)
            .values_list("tags", "status", "delay_until", "metadata", "updated_at", "materialised_at")
            .first()
        )
        if row is None:
            return ["tags", "delay", "metadata"]
        tags, status, delay_until, metadata, updated_at, materialised_at = row
        untouched = updated_at == materialised_at
        update: dict[str, Any] = {}
        merged = normalise_tags([*tags, *changes.tags])
        if len(merged) > max(MAX_TAGS, len(tags)):
            merged, skipped = merged[: max(MAX_TAGS, len(tags))], ["tags"]
        if merged != list(tags):
            update["tags"] = merged
        if changes.delay_until is not None and changes.delay_until != delay_until:
            if untouched and status == RunStatus.DELAYED:
                update["delay_until"] = changes.delay_until
                update["status"] = RunStatus.DELAYED if changes.delay_until > now else RunStatus.PENDING
            else:
                skipped.append("delay")
        if changes.metadata is not None and changes.metadata != metadata:
            if untouched:
                update["metadata"] = changes.metadata
            else:
                skipped.append("metadata")
        if update:
            TaskRun.objects.filter(id=run_id).update(**update, updated_at=now)
    return skipped


@contextmanager
def bounded_statements(*, statement_ms: int, lock_ms: int, idle_ms: int) -> Iterator[None]:
    """Cap every statement, lock wait and idle-in-transaction pause of this connection for the block: a
    stalled Postgres then fails a round (57014 / 55P03: retryable) instead of holding it past its lease,
    and a client that stops inside a transaction (a frozen or swapped-out worker) has its session ended by
    Postgres after ``idle_ms`` (25P03), which rolls the transaction back and frees its row locks, so other
    drainers' inserts of those ids stop waiting on it. Reset afterwards, so the connection is left as it
    was found. Postgres unreachable at the start is not this function's to report: the block runs
    unbounded and the drain meets the outage itself (release, circuit)."""
    try:
        with connection.cursor() as cur:
            cur.execute(
                "SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false),"
                " set_config('idle_in_transaction_session_timeout', %s, false)",
                [f"{statement_ms}ms", f"{lock_ms}ms", f"{idle_ms}ms"],
            )
    except DatabaseError:
        discard_connection()
    try:
        yield
    finally:
        try:
            with connection.cursor() as cur:
                cur.execute("RESET statement_timeout; RESET lock_timeout; RESET idle_in_transaction_session_timeout")
        except Exception:  # the connection broke during the block; it is discarded and reconnects clean
            discard_connection()


@contextmanager
def lock_wait(ms: int) -> Iterator[None]:
    """Lower this connection's ``lock_timeout`` to ``ms`` for the block, then restore it: the drain writes a
    round's entries one by one this way after the round's bulk write timed out on a lock, so an entry whose
    row another session holds costs ``ms``, not a full lock wait, and its round-mates go through."""
    with connection.cursor() as cur:
        cur.execute("SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, false)", [f"{ms}ms"])
        previous = cur.fetchone()[0]
    try:
        yield
    finally:
        try:
            with connection.cursor() as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, false)", [previous])
        except Exception:  # the connection broke during the block; it is discarded and reconnects clean
            discard_connection()


def discard_connection() -> None:
    """Drop this thread's database connection after it failed, so the next query reconnects instead of
    reusing a broken socket (web requests and drain rounds both outlive a Postgres restart)."""
    try:
        connection.close()
    except Exception:  # the connection is already broken; closing it is best effort
        log.debug("closing a broken connection failed", exc_info=True)


# ------------------------------------------------------------------------------- idempotency key clash


class ClashPolicy(StrEnum):
    """What to do when the key another row holds may not be reused."""

    ANSWER_HOLDER = "answer_holder"  # the direct trigger: the live holder is the answer (``isCached``)
    WITHOUT_KEY = "without_key"  # the drain: this run was already answered, so it is written without the key


def resolve_key_clash(
    snapshot: Snapshot, clash: Result, *, now: datetime, policy: ClashPolicy, buffered: bool
) -> Result:
    """The write of ``snapshot`` hit ``IDEMPOTENCY_CLASH`` (``clash``): another row holds its key — the key
    was reset, Redis lost the claim, or Redis was down. The one policy for it, wherever the write happened:

    1. take the key over if it may be reused (expired, or its run ended in ``REUSABLE_KEY_STATUSES``) and
       write again — the result of that write is returned (another clash means a new holder got there
       first; the caller treats it as in step 2);
    2. else, by ``policy``: ``ANSWER_HOLDER`` returns ``clash`` unchanged (the caller answers the holder);
       ``WITHOUT_KEY`` writes the run without the key, which stays with the run that holds it.
    """
    released = release_idempotency_key(
        snapshot.env_id, snapshot.task_identifier, snapshot.idempotency_key or "", now=now,
        statuses=REUSABLE_KEY_STATUSES,
    )  # fmt: skip
    if not released:
        if policy is ClashPolicy.ANSWER_HOLDER:
            return clash
        log.warning(
            "run %s lost its idempotency key to run %s; written without it", snapshot.id, clash.existing_run_id,
            extra={"run_id": snapshot.id, "env_id": snapshot.env_id, "org_id": snapshot.org_id},
        )  # fmt: skip
        snapshot = snapshot.replace(idempotency_key=None, idempotency_key_user=None, idempotency_key_expires_at=None)
    if buffered:
        return materialise_many([snapshot], now=now)[0]
    return trigger(snapshot, now=now)


def cancel_runs(env_id: int, run_ids: Sequence[str], reason: str, at: datetime) -> list[str]:
    """``cancel_run`` for many runs of one env in one UPDATE (a bulk action's chunk,
    docs/architecture.md#bulk-actions). Returns the ids that became CANCELED; missing, foreign and terminal
    runs are left as they are."""
    if not run_ids:
        return []
    error: Any = Jsonb({"type": "STRING_ERROR", "raw": reason})
    with connection.cursor() as cur:
        cur.execute(
            f"UPDATE {_TABLE} SET status = %s, completed_at = %s, error = %s, updated_at = %s"
            " WHERE env_id = %s AND id = ANY(%s) AND NOT (status = ANY(%s)) RETURNING id",
            [str(RunStatus.CANCELED), at, error, at, env_id, list(run_ids), [str(s) for s in TERMINAL_STATUSES]],
        )
        cancelled = [row[0] for row in cur.fetchall()]
    for run_id in cancelled:
        run_cancelled.send(sender=TaskRun, run_id=run_id, reason=reason)
    return cancelled


# --------------------------------------------------------- reschedule and metadata of a row (runs.mutations)


class RescheduleOutcome(StrEnum):
    RESCHEDULED = "rescheduled"
    NOT_DELAYED = "not_delayed"
    NOT_FOUND = "not_found"


def reschedule_run(run_id: str, env_id: int, delay_until: datetime, *, now: datetime) -> RescheduleOutcome:
    """A DELAYED row gets a new ``delay_until`` (PENDING at once if that is not ahead); others are refused."""
    with transaction.atomic():
        status = (
            TaskRun.objects.select_for_update()
            .filter(id=run_id, env_id=env_id)
            .values_list("status", flat=True)
            .first()
        )
        if status is None:
            return RescheduleOutcome.NOT_FOUND
        if status != RunStatus.DELAYED:
            return RescheduleOutcome.NOT_DELAYED
        new_status = RunStatus.DELAYED if delay_until > now else RunStatus.PENDING
        TaskRun.objects.filter(id=run_id).update(delay_until=delay_until, status=new_status, updated_at=now)
    return RescheduleOutcome.RESCHEDULED


def update_metadata(
    run_id: str, env_id: int, compute: Callable[[dict[str, Any]], tuple[dict[str, Any], str]], *, now: datetime
) -> dict[str, Any] | None:
    """Replace a row's metadata with ``compute(current)`` under the row lock, so concurrent updates apply one
    after the other. Returns the new metadata, or None when there is no such row. ``compute`` may raise
    (e.g. too large): nothing is written then."""
    with transaction.atomic():
        current = (
            TaskRun.objects.select_for_update().filter(id=run_id, env_id=env_id).values_list("metadata", flat=True)
        )
        found = list(current[:1])
        if not found:
            return None
        new, _ = compute(found[0] if isinstance(found[0], dict) else {})
        TaskRun.objects.filter(id=run_id).update(metadata=new, updated_at=now)
    return new
