"""Cancel, tags, reschedule, metadata and idempotency-key reset for runs wherever they are
(docs/architecture.md#reads-and-mutations-of-buffered-runs).

A run is either a Postgres row (changed through the engine), a buffered entry (changed through a
buffer script: hash fields, never a rewrite of the snapshot), or leased — being materialised right now.
For a leased run we wait up to ``MUTATE_WAIT_MS`` for its row and then change the row; if the row does
not appear in time the caller gets 503 and can retry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from buffer.buffer import Buffer, BufferUnavailable
from buffer.values import Entry, EntryStatus, MutationResult, MutationStatus
from mollifier_project.clock import from_ms, to_ms
from runs import engine, metadata, overrides
from runs.auth import EnvContext
from runs.locate import Where, locate
from runs.models import MAX_TAGS
from runs.schemas import MetadataOperation
from runs.snapshot import Snapshot, SnapshotError, from_snapshot

CANCEL_REASON = "Canceled by user"
POLL_INTERVAL_S = 0.05


class Status(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    TOO_MANY = "too_many"
    BUSY = "busy"  # leased and the row did not appear within MUTATE_WAIT_MS
    NOT_DELAYED = "not_delayed"  # reschedule: the run is not DELAYED


@dataclass(frozen=True, slots=True)
class Mutation:
    status: Status
    count: int = 0  # tags: how many were added, or the count it would have reached (TOO_MANY)
    metadata: dict[str, Any] | None = None  # metadata: the run's metadata after the update


def _where(env: EnvContext, run_id: str, buffer: Buffer) -> Where:
    return locate(env, run_id, buffer=buffer, snapshot=False, row_fields=()).where


def _wait_for_row(env: EnvContext, run_id: str, buffer: Buffer, wait_ms: int, sleep: Callable[[float], None]) -> bool:
    deadline = time.monotonic() + wait_ms / 1000
    while True:
        if _where(env, run_id, buffer) is Where.ROW:
            return True
        if time.monotonic() >= deadline:
            return False
        sleep(POLL_INTERVAL_S)


def _on_row_or_buffer(
    env: EnvContext,
    run_id: str,
    *,
    buffer: Buffer,
    wait_ms: int,
    on_row: Callable[[], Mutation],
    on_buffer: Callable[[], Any],
    sleep: Callable[[float], None] = time.sleep,
) -> Mutation:
    """Apply a change to the row if there is one, else to the buffered entry; a leased entry waits for
    its row. ``on_buffer`` returns the buffer script's result (``.status``, ``.count``): the script, not the
    ``locate`` before it, is the authority on the entry, since the drain may take it in between."""
    where = _where(env, run_id, buffer)
    if where is Where.ROW:
        return on_row()
    if where is Where.NOWHERE:
        return Mutation(Status.NOT_FOUND)
    result = on_buffer()
    if isinstance(result, Mutation):  # decided without writing (a check on the entry failed)
        return result
    status = str(result.status)
    if status == "QUEUED" or status == "DEAD":
        return Mutation(Status.OK, getattr(result, "count", 0) or 0)
    if status == "TOO_MANY":
        return Mutation(Status.TOO_MANY, result.count)
    if status in ("LEASED", "ACKED"):
        if _wait_for_row(env, run_id, buffer, wait_ms if status == "LEASED" else max(wait_ms, 200), sleep):
            return on_row()
        return Mutation(Status.BUSY)
    return Mutation(Status.NOT_FOUND)


def cancel(env: EnvContext, run_id: str, *, buffer: Buffer, now_ms: int, wait_ms: int) -> Mutation:
    """Cancel wins: a buffered run is flagged (the drain writes a CANCELED row); a row is cancelled."""
    now = from_ms(now_ms)

    def on_row() -> Mutation:
        outcome = engine.cancel_run(run_id, CANCEL_REASON, now)
        return Mutation(Status.NOT_FOUND if outcome == engine.CancelOutcome.NOT_FOUND else Status.OK)

    return _on_row_or_buffer(
        env, run_id, buffer=buffer, wait_ms=wait_ms, on_row=on_row,
        on_buffer=lambda: buffer.cancel(run_id, org_id=env.org_id, env_id=env.env_id, now_ms=now_ms,
                                        reason=CANCEL_REASON),
    )  # fmt: skip


def add_tags(env: EnvContext, run_id: str, tags: list[str], *, buffer: Buffer, now_ms: int, wait_ms: int) -> Mutation:
    """Append tags, de-duplicated, at most ``MAX_TAGS`` per run."""
    now = from_ms(now_ms)

    def on_row() -> Mutation:
        outcome, count = engine.add_tags(run_id, env.env_id, tags, now=now)
        return Mutation(Status(outcome.value) if outcome != engine.TagsOutcome.ADDED else Status.OK, count)

    return _on_row_or_buffer(
        env, run_id, buffer=buffer, wait_ms=wait_ms, on_row=on_row,
        on_buffer=lambda: buffer.append_tags(run_id, org_id=env.org_id, env_id=env.env_id, tags=tags,
                                             max_tags=MAX_TAGS),
    )  # fmt: skip


def reset_idempotency_key(env: EnvContext, task: str, key: str, *, buffer: Buffer, now_ms: int) -> bool:
    """Forget an idempotency key so the next trigger with it makes a new run. True if anything held it."""
    now = from_ms(now_ms)
    cleared = engine.release_idempotency_key(env.env_id, task, key, now=now)
    try:
        released = buffer.reset_claim("idem", org_id=env.org_id, env_id=env.env_id, task=task, key=key)
    except BufferUnavailable:
        released = False
    return bool(cleared) or released


# ------------------------------------------------------------------------ reschedule and metadata

MAX_METADATA_CAS_ATTEMPTS = 50


def _entry_snapshot(env: EnvContext, run_id: str, buffer: Buffer) -> tuple[Entry, Snapshot] | Mutation | MutationResult:
    """The caller's live entry and its effective snapshot (``runs.overrides``); what to answer otherwise."""
    entry = buffer.get(run_id, org_id=env.org_id)
    if entry is None or entry.env_id != env.env_id:
        return Mutation(Status.NOT_FOUND)
    if entry.status in (EntryStatus.LEASED, EntryStatus.ACKED):
        return MutationResult(MutationStatus(entry.status.value))  # wait for the row
    try:
        return entry, overrides.effective(from_snapshot(entry.snapshot), entry)
    except SnapshotError:
        return Mutation(Status.BUSY)  # the drain fails it into a SYSTEM_FAILURE row shortly


def reschedule(
    env: EnvContext, run_id: str, delay_until: datetime, *, buffer: Buffer, now_ms: int, wait_ms: int
) -> Mutation:
    """A delayed run gets a new ``delay_until``; a run that is not delayed is ``NOT_DELAYED``."""
    now = from_ms(now_ms)

    def on_row() -> Mutation:
        outcome = engine.reschedule_run(run_id, env.env_id, delay_until, now=now)
        return Mutation(_RESCHEDULED[outcome])

    def on_buffer() -> Mutation | MutationResult:
        found = _entry_snapshot(env, run_id, buffer)
        if not isinstance(found, tuple):
            return found
        entry, snapshot = found
        delayed = snapshot.delay_until is not None and snapshot.delay_until > now
        if entry.status is not EntryStatus.QUEUED or entry.cancelled or not delayed:
            return Mutation(Status.NOT_DELAYED)
        return buffer.reschedule(run_id, org_id=env.org_id, env_id=env.env_id, delay_until_ms=to_ms(delay_until))

    return _on_row_or_buffer(env, run_id, buffer=buffer, wait_ms=wait_ms, on_row=on_row, on_buffer=on_buffer)


_RESCHEDULED = {
    engine.RescheduleOutcome.RESCHEDULED: Status.OK,
    engine.RescheduleOutcome.NOT_DELAYED: Status.NOT_DELAYED,
    engine.RescheduleOutcome.NOT_FOUND: Status.NOT_FOUND,
}


def update_metadata(
    env: EnvContext,
    run_id: str,
    *,
    replace: dict[str, Any] | None,
    operations: Sequence[MetadataOperation],
    buffer: Buffer,
    now_ms: int,
    wait_ms: int,
    limit: int,
) -> Mutation:
    """Replace and/or apply operations to a run's metadata; ``Mutation.metadata`` is the result.

    A row is changed under its row lock. A buffered entry is changed by compare-and-set on its
    ``metadata_version``: on CONFLICT (another writer got there first) the update is recomputed from the
    value the script returned and tried again, so concurrent writers all land. Raises
    ``metadata.MetadataTooLarge`` past ``limit`` bytes (nothing written).
    """
    now = from_ms(now_ms)

    def compute(current: dict[str, Any]) -> tuple[dict[str, Any], str]:
        new = metadata.apply(current, replace=replace, operations=operations)
        return new, metadata.checked(new, limit=limit)

    def on_row() -> Mutation:
        new = engine.update_metadata(run_id, env.env_id, compute, now=now)
        return Mutation(Status.NOT_FOUND) if new is None else Mutation(Status.OK, metadata=new)

    def on_buffer() -> Mutation | MutationResult:
        found = _entry_snapshot(env, run_id, buffer)
        if not isinstance(found, tuple):
            return found
        entry, snapshot = found
        current, version = overrides.metadata_of(snapshot, entry), entry.metadata_version
        for _ in range(MAX_METADATA_CAS_ATTEMPTS):
            new, text = compute(current)
            result = buffer.set_metadata(
                run_id, org_id=env.org_id, env_id=env.env_id, metadata_json=text, expected_version=version
            )
            if result.status is not MutationStatus.CONFLICT:
                return Mutation(Status.OK, metadata=new) if result.status in _WRITTEN else result
            version = result.version or 0
            current = json.loads(result.metadata) if result.metadata else overrides.metadata_of(snapshot, entry)
        return Mutation(Status.BUSY)

    return _on_row_or_buffer(env, run_id, buffer=buffer, wait_ms=wait_ms, on_row=on_row, on_buffer=on_buffer)


_WRITTEN = (MutationStatus.QUEUED, MutationStatus.DEAD)


def read_metadata(env: EnvContext, run_id: str, *, buffer: Buffer) -> dict[str, Any] | None:
    """The run's metadata (``{}`` when it has none), or None when the caller's env has no such run."""
    found = locate(env, run_id, buffer=buffer, row_fields=("metadata",))
    if found.where is Where.ROW:
        assert found.row is not None
        return found.row.metadata if isinstance(found.row.metadata, dict) else {}
    if found.where is not Where.BUFFERED:
        return None
    assert found.entry is not None
    try:
        return overrides.metadata_of(from_snapshot(found.entry.snapshot), found.entry)
    except SnapshotError:
        return None


def lineage(env: EnvContext, run_id: str, *, buffer: Buffer) -> tuple[str | None, str | None]:
    """(parent run id, root run id) of a run of the caller's env, for ``parentOperations``/``rootOperations``."""
    found = locate(env, run_id, buffer=buffer, row_fields=("parent_run_id", "root_run_id"))
    if found.where is Where.ROW:
        assert found.row is not None
        return found.row.parent_run_id, found.row.root_run_id
    if found.where is Where.BUFFERED and found.entry is not None:
        try:
            s = from_snapshot(found.entry.snapshot)
        except SnapshotError:
            return None, None
        return s.parent_run_id, s.root_run_id
    return None, None
