"""Where is this run? — the one answer to that question, for the trigger path, reads, batches and mutations.

A run id answered to a client is, at any moment, in one of these places (docs/architecture.md#where-a-run-is):

* ``ROW``: its ``TaskRun`` row exists in the caller's env (Postgres is asked first: it is the truth once
  written, and most runs are rows);
* ``BUFFERED``: its buffer entry exists in the caller's env and is QUEUED, LEASED or DEAD (``entry.status``
  says which: a LEASED entry is being materialised right now);
* ``IN_FLIGHT``: the entry is ACKED — its row committed — but the row is not visible to us yet (looked up
  once more after the entry was read): the caller may retry;
* ``NOWHERE``: neither (never created, created in another env, or long gone).

Tenancy: a row or entry of another env is ``NOWHERE``, never an error — the API answers 404.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from buffer.buffer import Buffer, Entry, EntryStatus
from runs.auth import EnvContext
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
    """``locate`` for several runs of one env: one query for the rows, one Redis round trip for the rest,
    and one more query for the entries found ACKED."""
    rows = _rows(env, run_ids, row_fields)
    found: dict[str, Located] = {run_id: Located(Where.ROW, row=row) for run_id, row in rows.items()}
    rest = [run_id for run_id in dict.fromkeys(run_ids) if run_id not in found]
    entries = buffer.get_many(rest, org_id=env.org_id, snapshot=snapshot) if rest else []
    acked: list[tuple[str, Entry]] = []
    for run_id, entry in zip(rest, entries, strict=True):
        if entry is None or entry.env_id != env.env_id:
            found[run_id] = NOWHERE
        elif entry.status is EntryStatus.ACKED:
            acked.append((run_id, entry))
        else:
            found[run_id] = Located(Where.BUFFERED, entry=entry)
    if acked:  # the row committed between our two reads, or is about to be visible: look once more
        late = _rows(env, [run_id for run_id, _ in acked], row_fields)
        for run_id, entry in acked:
            row = late.get(run_id)
            found[run_id] = Located(Where.ROW, row=row) if row else Located(Where.IN_FLIGHT, entry=entry)
    return found


def _rows(env: EnvContext, run_ids: Sequence[str], fields: Sequence[str] | None) -> dict[str, TaskRun]:
    if not run_ids:
        return {}
    rows = TaskRun.objects.filter(env_id=env.env_id)
    rows = rows.filter(id=run_ids[0]) if len(run_ids) == 1 else rows.filter(id__in=list(run_ids))
    if fields is not None:
        rows = rows.only("id", *fields)
    return {row.id: row for row in rows}
