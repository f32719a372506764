"""Reads for the API: one run (Postgres first, then the buffer) and the cursor-paginated run list.

Tenancy: every read is scoped to the caller's env; a run of another env is "not found" (404, never
403), whether it is a row or a buffered entry.

A list query that no row could ever match, or that Postgres or the date arithmetic would choke on (a NUL
anywhere, a period or date out of range, a forged cursor), is a ``QueryError`` naming the parameter
(docs/api.md#bad-input).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.db.models import Q

from buffer.buffer import Buffer, EntryStatus
from mollifier_project.clock import from_ms
from runs import overrides, presenters
from runs.auth import EnvContext
from runs.durations import DurationError, parse_duration
from runs.locate import Where, locate
from runs.models import TaskRun
from runs.snapshot import SnapshotError, from_snapshot

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
_PERIOD = re.compile(r"^\d+[smhdw]$")


class QueryError(ValueError):
    """A malformed list query; the message names the parameter."""


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


def _cursor(run: TaskRun) -> str:
    raw = f"{run.created_at.isoformat()}|{run.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_cursor(value: str, name: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        created, run_id = raw.split("|", 1)
        at = datetime.fromisoformat(created)
        if at.tzinfo is None or "\x00" in run_id:
            raise ValueError("not a cursor this server issued")
        return at.astimezone(UTC), run_id  # a date that does not exist in UTC overflows here
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise QueryError(f"{name}: invalid cursor") from None


def _csv(params: dict[str, str], name: str) -> list[str]:
    return [v for v in (params.get(name) or "").split(",") if v]


def _epoch_ms(params: dict[str, str], name: str) -> datetime | None:
    value = params.get(name)
    if not value:
        return None
    try:
        return from_ms(int(value))
    except (ValueError, OverflowError, OSError):
        raise QueryError(f"{name}: expected epoch milliseconds, got {value[:40]!r}") from None


def list_runs(env: EnvContext, params: dict[str, str], *, now: datetime) -> dict[str, Any]:
    """``GET /api/v1/runs``: newest first, keyset pagination on (created_at, id), SDK filters.

    Only materialised runs are listed; a run still in the buffer appears once its row is written.
    """
    for key, value in params.items():
        if "\x00" in key:
            raise QueryError(f"query parameter {key!r}: must not contain a NUL character")
        if "\x00" in value:
            raise QueryError(f"{key}: must not contain a NUL character")
    try:
        size = int(params.get("page[size]") or DEFAULT_PAGE_SIZE)
    except ValueError:
        raise QueryError("page[size]: expected an integer") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise QueryError(f"page[size]: must be between 1 and {MAX_PAGE_SIZE}")
    runs = TaskRun.objects.filter(env_id=env.env_id)
    statuses = _csv(params, "filter[status]")
    if statuses:
        unknown = [s for s in statuses if s not in presenters.API_STATUSES]
        if unknown:
            raise QueryError(f"filter[status]: unknown status {unknown[0]!r}")
        # WAITING, DEQUEUED, PENDING_VERSION are valid SDK statuses no run here has: they match nothing.
        runs = runs.filter(status__in=[i for s in statuses for i in presenters.INTERNAL_STATUSES.get(s, [])])
    if tasks := _csv(params, "filter[taskIdentifier]"):
        runs = runs.filter(task_identifier__in=tasks)
    if tags := _csv(params, "filter[tag]"):
        runs = runs.filter(tags__overlap=tags)
    if batch := params.get("filter[batch]"):
        runs = runs.filter(batch_id=batch)
    if queue := params.get("filter[queue]"):
        if queue.startswith("task/"):  # a task's default queue: runs of that task with no named queue
            name = queue.removeprefix("task/")
            runs = runs.filter(Q(queue=queue) | Q(queue__isnull=True, task_identifier=name))
        else:
            runs = runs.filter(queue=queue)
    if machine := params.get("filter[machine]"):
        runs = runs.filter(machine=machine)
    if since := _epoch_ms(params, "filter[createdAt][from]"):
        runs = runs.filter(created_at__gte=since)
    if until := _epoch_ms(params, "filter[createdAt][to]"):
        runs = runs.filter(created_at__lte=until)
    if period := params.get("filter[createdAt][period]"):
        if not _PERIOD.match(period):
            raise QueryError(f"filter[createdAt][period]: expected e.g. 1d or 12h, got {period[:40]!r}")
        try:
            span = parse_duration(period)
        except DurationError as exc:
            raise QueryError(f"filter[createdAt][period]: {exc}") from None
        runs = runs.filter(created_at__gte=now - span)

    after, before = params.get("page[after]"), params.get("page[before]")
    if after:
        created, run_id = _parse_cursor(after, "page[after]")
        runs = runs.filter(Q(created_at__lt=created) | Q(created_at=created, id__lt=run_id))
    elif before:
        created, run_id = _parse_cursor(before, "page[before]")
        runs = runs.filter(Q(created_at__gt=created) | Q(created_at=created, id__gt=run_id))
    order = ("created_at", "id") if before and not after else ("-created_at", "-id")
    page = list(runs.order_by(*order)[: size + 1])
    more = len(page) > size
    page = page[:size]
    if before and not after:
        page.reverse()
    env_doc = {"id": str(env.env_id), "name": env.env_slug}
    data = [{**presenters.run_row(run, detail=False), "env": env_doc} for run in page]
    pagination: dict[str, str] = {}
    if page:
        has_next = more if not (before and not after) else True
        has_previous = bool(after) or (bool(before) and more)
        if has_next:
            pagination["next"] = _cursor(page[-1])
        if has_previous:
            pagination["previous"] = _cursor(page[0])
    return {"data": data, "pagination": pagination}
