"""Reads for the API: one run (wherever it is) and the run list (``runs.listing``).

Tenancy: every read is scoped to the caller's env; a run of another env is "not found" (404, never
403), whether it is a row or a buffered entry.

A list query that no row could ever match, or that Postgres or the date arithmetic would choke on (a NUL
anywhere, a period or date out of range, a forged cursor), is a ``QueryError`` naming the parameter
(docs/api.md#bad-input).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from buffer.buffer import Buffer
from buffer.models import BufferDataLoss
from buffer.values import EntryStatus
from mollifier_project.clock import from_ms
from runs import ids, listing, overrides, presenters
from runs.auth import EnvContext
from runs.locate import Where, locate
from runs.snapshot import SnapshotError, from_snapshot

QueryError = listing.QueryError


@dataclass(frozen=True, slots=True)
class Retrieved:
    doc: dict[str, Any] | None
    maybe_in_flight: bool = False  # the buffer says materialised but the row is not visible yet
    lost_at: datetime | None = None  # not found, and a buffer data loss of its shard was detected then (see lost_at)


LOST_RUN_LOOKBACK = timedelta(days=1)  # a run minted this long before a data loss may have been buffered then
LOST_RUN_WINDOW = timedelta(days=7)  # how long after a data loss a missing run's 404 says it may have been lost


def retrieve(env: EnvContext, run_id: str, *, buffer: Buffer, now: datetime) -> Retrieved:
    """The run as ``RetrieveRunResponse``, or ``Retrieved(None)``."""
    found = locate(env, run_id, buffer=buffer)
    if found.where is Where.ROW:
        assert found.row is not None
        return Retrieved(presenters.run_row(found.row))
    if found.where is Where.NOWHERE:
        return Retrieved(None, lost_at=lost_at(env, run_id, buffer=buffer, now=now))
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


def lost_at(env: EnvContext, run_id: str, *, buffer: Buffer, now: datetime) -> datetime | None:
    """When a buffer data loss that may have taken ``run_id`` was detected (docs/api.md#retrieve-a-run), or
    ``None``: a loss of the env's shard, detected in the last ``LOST_RUN_WINDOW``, at most ``LOST_RUN_LOOKBACK``
    after the id was minted (a run that old was written long before). Only a 404 asks: one indexed query over
    a table of a few rows."""
    minted = ids.minted_ms(run_id)
    if minted is None:
        return None
    minted_at = from_ms(minted)
    loss = (
        BufferDataLoss.objects.filter(
            prefix=buffer.prefix,
            shards__contains=[buffer.shard_for(env.org_id)],
            detected_at__gte=max(minted_at, now - LOST_RUN_WINDOW),
            detected_at__lte=minted_at + LOST_RUN_LOOKBACK,
        )
        .order_by("detected_at")
        .only("detected_at")
        .first()
    )
    return None if loss is None else loss.detected_at


# ---------------------------------------------------------------------------------------------- list


def list_runs(
    env: EnvContext, params: dict[str, str], *, now: datetime, buffer: Buffer | None = None
) -> dict[str, Any]:
    """``GET /api/v1/runs``: rows and buffered runs in one newest-first list with one cursor (``runs.listing``)."""
    return listing.list_runs(env, params, buffer=buffer or Buffer.from_settings("request"), now=now)
