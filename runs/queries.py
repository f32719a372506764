"""Reads for the API: one run (wherever it is) and the run list (``runs.listing``).

Tenancy: every read is scoped to the caller's env; a run of another env is "not found" (404, never
403), whether it is a row or a buffered entry.

A list query that no row could ever match, or that Postgres or the date arithmetic would choke on (a NUL
anywhere, a period or date out of range, a forged cursor), is a ``QueryError`` naming the parameter
(docs/api.md#bad-input).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from buffer.buffer import Buffer, EntryStatus
from mollifier_project.clock import from_ms
from runs import listing, overrides, presenters
from runs.auth import EnvContext
from runs.locate import Where, locate
from runs.snapshot import SnapshotError, from_snapshot

QueryError = listing.QueryError


@dataclass(frozen=True, slots=True)
class Retrieved:
    doc: dict[str, Any] | None
    maybe_in_flight: bool = False  # the buffer says materialised but the row is not visible yet


def retrieve(env: EnvContext, run_id: str, *, buffer: Buffer, now: datetime) -> Retrieved:
    """The run as ``RetrieveRunResponse``, or ``Retrieved(None)``."""
    found = locate(env, run_id, buffer=buffer)
    if found.where is Where.ROW:
        assert found.row is not None
        return Retrieved(presenters.run_row(found.row))
    if found.where is Where.NOWHERE:
        return Retrieved(None)
    if found.where is Where.IN_FLIGHT:
        return Retrieved(None, maybe_in_flight=True)
    entry = found.entry
    assert entry is not None
    try:
        snapshot = overrides.effective(from_snapshot(entry.snapshot), entry)
    except SnapshotError:
        return Retrieved(None, maybe_in_flight=True)
    return Retrieved(
        presenters.buffered_run(
            snapshot,
            extra_tags=entry.extra_tags,
            cancelled_at=None if entry.cancelled_at_ms is None else from_ms(entry.cancelled_at_ms),
            cancel_reason=entry.cancel_reason,
            now=now,
            dead_reason=(entry.last_error or "dead-lettered") if entry.status is EntryStatus.DEAD else None,
        )
    )


# ---------------------------------------------------------------------------------------------- list


def list_runs(
    env: EnvContext, params: dict[str, str], *, now: datetime, buffer: Buffer | None = None
) -> dict[str, Any]:
    """``GET /api/v1/runs``: rows and buffered runs in one newest-first list with one cursor (``runs.listing``)."""
    return listing.list_runs(env, params, buffer=buffer or Buffer.from_settings("request"), now=now)
