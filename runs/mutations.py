"""Cancel, tag and idempotency-key reset for runs wherever they are
(docs/architecture.md#reads-and-mutations-of-buffered-runs).

A run is either a Postgres row (changed through the engine), a buffered entry (changed through a
buffer script: hash fields, never a rewrite of the snapshot), or leased — being materialised right now.
For a leased run we wait up to ``MUTATE_WAIT_MS`` for its row and then change the row; if the row does
not appear in time the caller gets 503 and can retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from buffer.buffer import Buffer, BufferUnavailable
from mollifier_project.clock import from_ms
from runs import engine
from runs.auth import EnvContext
from runs.locate import Where, locate
from runs.models import MAX_TAGS

CANCEL_REASON = "Canceled by user"
POLL_INTERVAL_S = 0.05


class Status(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"
    TOO_MANY = "too_many"
    BUSY = "busy"  # leased and the row did not appear within MUTATE_WAIT_MS


@dataclass(frozen=True, slots=True)
class Mutation:
    status: Status
    count: int = 0  # tags: how many were added, or the count it would have reached (TOO_MANY)


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
