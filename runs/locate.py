"""Where is this run? — the one answer to that question, for the trigger path, reads, batches and mutations.

A run id answered to a client is, at any moment, in one of these places (docs/architecture.md#where-a-run-is):

* ``ROW``: its ``TaskRun`` row exists in the caller's env (the truth once written);
* ``BUFFERED``: its buffer entry exists in the caller's env and is QUEUED, LEASED or DEAD (``entry.status``
  says which: a LEASED entry is being materialised right now);
* ``IN_FLIGHT``: the entry is ACKED — its row committed — but the row is not visible to us: the caller may
  retry;
* ``NOWHERE``: neither (never created, created in another env, or long gone).

The buffer is read first, then Postgres: a row is written before its entry is acked, so a row committed
between the two reads is still found, and when Postgres is down (``db_errors.OUTAGE``) a run whose entry is
live (QUEUED, LEASED, DEAD) is answered from the entry alone — a client retrying a keyed trigger during an
outage gets its buffered run back instead of a 503 (and then a duplicate). Other runs re-raise the error.

Tenancy: a row or entry of another env is ``NOWHERE``, never an error — the API answers 404.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from django.db import DatabaseError

from buffer.buffer import Buffer
from buffer.values import Entry, EntryStatus
from runs import engine
from runs.auth import EnvContext
from runs.db_errors import Failure, classify
from runs.models import TaskRun


class Where(StrEnum):
    ROW = "row"
    BUFFERED = "buffered"
    IN_FLIGHT = "in_flight"
    NOWHERE = "nowhere"


@dataclass(frozen=True, slots=True)
class Located:
    where: Where
    row: TaskRun | None = None  # ROW
    entry: Entry | None = None  # BUFFERED (and IN_FLIGHT: the ACKED entry)


NOWHERE = Located(Where.NOWHERE)


def locate(
    env: EnvContext,
    run_id: str,
    *,
    buffer: Buffer,
    snapshot: bool = True,
    row_fields: Sequence[str] | None = None,
) -> Located:
    """Where ``run_id`` is, for ``env``.

    ``snapshot=False`` reads the entry without its snapshot and ``row_fields`` only those columns of the
    row: a question of status need not move a payload of megabytes.
    """
    return locate_many(env, [run_id], buffer=buffer, snapshot=snapshot, row_fields=row_fields)[run_id]


def locate_many(
    env: EnvContext,
    run_ids: Sequence[str],
    *,
    buffer: Buffer,
    snapshot: bool = True,
    row_fields: Sequence[str] | None = None,
) -> dict[str, Located]:
    """``locate`` for several runs of one env: one Redis round trip for the entries, then one query for the
    rows."""
    ids = list(dict.fromkeys(run_ids))
    entries = dict(zip(ids, buffer.get_many(ids, org_id=env.org_id, snapshot=snapshot), strict=True)) if ids else {}
    mine = {run_id: e for run_id, e in entries.items() if e is not None and e.env_id == env.env_id}
    try:
        rows = _rows(env, ids, row_fields)
    except DatabaseError as exc:
        live = all(run_id in mine and mine[run_id].status is not EntryStatus.ACKED for run_id in ids)
        if classify(exc) is not Failure.OUTAGE or not live:
            raise
        engine.discard_connection()
        return {run_id: Located(Where.BUFFERED, entry=mine[run_id]) for run_id in ids}
    found: dict[str, Located] = {}
    for run_id in ids:
        row, entry = rows.get(run_id), mine.get(run_id)
        if row is not None:
            found[run_id] = Located(Where.ROW, row=row)
        elif entry is None:
            found[run_id] = NOWHERE
        elif entry.status is EntryStatus.ACKED:
            found[run_id] = Located(Where.IN_FLIGHT, entry=entry)
        else:
            found[run_id] = Located(Where.BUFFERED, entry=entry)
    return found


def _rows(env: EnvContext, run_ids: Sequence[str], fields: Sequence[str] | None) -> dict[str, TaskRun]:
    if not run_ids:
        return {}
    rows = TaskRun.objects.filter(env_id=env.env_id)
    rows = rows.filter(id=run_ids[0]) if len(run_ids) == 1 else rows.filter(id__in=list(run_ids))
    if fields is not None:
        rows = rows.only("id", *fields)
    return {row.id: row for row in rows}
