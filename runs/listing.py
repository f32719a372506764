"""The run list over both places a run can be: Postgres rows and buffered entries (docs/architecture.md#run-list).

One order for both — newest first by (created_at, id), ids compared as bytes (``COLLATE "C"`` in Postgres,
the index's member order in Redis) — and one keyset cursor, the position of the last run a page showed.
A buffered run's row is written with the snapshot's ``created_ms`` as ``created_at``, so a run keeps its
position when it drains: a page never shows it twice and the next page cannot skip it.

A page:

1. scans the env's buffered entries after the cursor (``Buffer.env_page``), filtering their snapshots in
   Python, until it has ``size + 1`` matches, the index is exhausted, or ``MAX_SCAN_CALLS`` calls are spent
   — the bound on Redis work per page. A scan stopped by that bound leaves a *frontier*: the position of
   the last entry it looked at;
2. then reads up to ``size + 1`` rows after the cursor. Buffer first, then Postgres: a row is committed
   before its entry leaves the buffer, so a run draining between the two reads is found at least once,
   and the row wins the de-duplication by id;
3. merges both, keeps only what lies before the frontier (an unscanned entry might sort between), and cuts
   at ``size``. The next cursor is the last run shown — or the frontier when the page came out short
   because of it, so the next page resumes the scan there (a filtered list over many non-matching
   buffered entries may answer a short, even empty, page with a ``next`` cursor).

Filters that no run here can match (``filter[version]``, ``filter[schedule]``, ``filter[region]``,
``filter[bulkAction]``, ``filter[isTest]=true``) match nothing — never everything: a bulk cancel by
``version`` must not cancel every run.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.db.models.functions import Collate

from buffer.buffer import Buffer
from buffer.values import Entry, EntryStatus
from mollifier_project.clock import EPOCH, from_ms
from runs import overrides, presenters
from runs.auth import EnvContext
from runs.durations import DurationError, parse_duration
from runs.models import TaskRun
from runs.snapshot import Snapshot, SnapshotError, from_snapshot

DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
MAX_SCAN_CALLS = 4  # env_page calls per page at most (docs/architecture.md#run-list)
SCAN_BATCH = 250  # entries per env_page call when a filter may drop some
_INDEX_MS_LIMIT = 10**15  # the env index holds created_ms as 15 digits
_PERIOD = re.compile(r"^\d+[smhdw]$")
# Statuses a buffered run can show (presenters.buffered_status): a status filter without any of them skips Redis.
BUFFERED_STATUSES = frozenset({"QUEUED", "DELAYED", "CANCELED", "SYSTEM_FAILURE"})
# Filters no run here can match (no versions, schedules, regions or test runs; bulk actions do not tag runs).
_NOTHING_MATCHES = ("filter[version]", "filter[schedule]", "filter[region]", "filter[bulkAction]")


class QueryError(ValueError):
    """A malformed list query; the message names the parameter."""


# ------------------------------------------------------------------------------------------ positions

Pos = tuple[int, str]
"""A run's place in the list: (created_at in epoch microseconds, run id)."""


def _us(value: datetime) -> int:
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def encode_cursor(pos: Pos) -> str:
    return base64.urlsafe_b64encode(f"{pos[0]}|{pos[1]}".encode()).decode().rstrip("=")


def decode_cursor(value: str, name: str) -> Pos:
    """A cursor this server issued, or ``QueryError`` naming the parameter. Cursors of the rows-only list
    (an ISO date instead of microseconds) are still read."""
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        created, run_id = raw.split("|", 1)
        if "\x00" in run_id or len(run_id) > 64:
            raise ValueError("not a cursor this server issued")
        if created.lstrip("-").isdigit():
            us = int(created)
            _from_us(us)  # in range
        else:
            at = datetime.fromisoformat(created)
            if at.tzinfo is None:
                raise ValueError("not a cursor this server issued")
            us = _us(at.astimezone(UTC))
        return us, run_id
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise QueryError(f"{name}: invalid cursor") from None


def _redis_bound(pos: Pos, *, descending: bool) -> tuple[int, str]:
    """``pos`` as the index's (created_ms, run_id) bound. Entries have whole milliseconds; a row position
    between two milliseconds becomes the next one up (descending) or down (ascending) with an id that
    sorts before (after) every id, which selects the same entries."""
    us, run_id = pos
    if us % 1000 == 0:
        return us // 1000, run_id
    return (us // 1000 + 1, "") if descending else (us // 1000, "\U0010ffff")


# -------------------------------------------------------------------------------------------- filters


@dataclass(frozen=True, slots=True)
class RunFilter:
    """The list's filters, parsed once; applied as a queryset to rows and as a predicate to snapshots."""

    statuses: frozenset[str] = frozenset()
    tasks: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    batch: str | None = None
    queues: tuple[str, ...] = ()
    machines: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    nothing: bool = False  # a filter no run can match
    given: tuple[str, ...] = field(default=(), compare=False)  # the parameters that were set

    @property
    def buffered_may_match(self) -> bool:
        return not self.nothing and (not self.statuses or bool(self.statuses & BUFFERED_STATUSES))


def _csv(params: Mapping[str, str], name: str) -> list[str]:
    return [v for v in (params.get(name) or "").split(",") if v]


def _epoch_ms(params: Mapping[str, str], name: str) -> datetime | None:
    value = params.get(name)
    if not value:
        return None
    try:
        return from_ms(int(value))
    except (ValueError, OverflowError, OSError):
        raise QueryError(f"{name}: expected epoch milliseconds, got {value[:40]!r}") from None


def parse_filter(params: Mapping[str, str], *, now: datetime) -> RunFilter:
    """``filter[...]`` query parameters → ``RunFilter``; ``QueryError`` names a malformed one."""
    for key, value in params.items():
        if "\x00" in key:
            raise QueryError(f"query parameter {key!r}: must not contain a NUL character")
        if "\x00" in value:
            raise QueryError(f"{key}: must not contain a NUL character")
    statuses = _csv(params, "filter[status]")
    unknown = [s for s in statuses if s not in presenters.API_STATUSES]
    if unknown:
        raise QueryError(f"filter[status]: unknown status {unknown[0]!r}")
    is_test = params.get("filter[isTest]", "")
    if is_test not in ("", "true", "false"):
        raise QueryError(f"filter[isTest]: expected true or false, got {is_test[:40]!r}")
    since = _epoch_ms(params, "filter[createdAt][from]")
    until = _epoch_ms(params, "filter[createdAt][to]")
    if period := params.get("filter[createdAt][period]"):
        if not _PERIOD.match(period):
            raise QueryError(f"filter[createdAt][period]: expected e.g. 1d or 12h, got {period[:40]!r}")
        try:
            span = parse_duration(period)
            start = now - span
        except (DurationError, OverflowError) as exc:
            raise QueryError(f"filter[createdAt][period]: {exc}") from None
        since = max(since, start) if since else start
    nothing = is_test == "true" or any(params.get(name) for name in _NOTHING_MATCHES)
    return RunFilter(
        statuses=frozenset(statuses),
        tasks=frozenset(_csv(params, "filter[taskIdentifier]")),
        tags=frozenset(_csv(params, "filter[tag]")),
        batch=params.get("filter[batch]") or None,
        queues=tuple(_csv(params, "filter[queue]")),
        machines=frozenset(_csv(params, "filter[machine]")),
        since=since,
        until=until,
        nothing=nothing,
        given=tuple(k for k, v in params.items() if k.startswith("filter[") and v),
    )


def filter_rows(env: EnvContext, f: RunFilter) -> QuerySet[TaskRun]:
    runs = TaskRun.objects.filter(env_id=env.env_id)
    if f.nothing:
        return runs.none()
    if f.statuses:
        # WAITING, DEQUEUED, PENDING_VERSION are valid SDK statuses no run here has: they match nothing.
        runs = runs.filter(status__in=[i for s in f.statuses for i in presenters.INTERNAL_STATUSES.get(s, [])])
    if f.tasks:
        runs = runs.filter(task_identifier__in=f.tasks)
    if f.tags:
        runs = runs.filter(tags__overlap=list(f.tags))
    if f.batch:
        runs = runs.filter(batch_id=f.batch)
    if f.queues:
        queue_q = Q()
        for queue in f.queues:
            queue_q |= Q(queue=queue)
            if queue.startswith("task/"):  # a task's default queue: runs of that task with no named queue
                queue_q |= Q(queue__isnull=True, task_identifier=queue.removeprefix("task/"))
        runs = runs.filter(queue_q)
    if f.machines:
        runs = runs.filter(machine__in=f.machines)
    if f.since:
        runs = runs.filter(created_at__gte=f.since)
    if f.until:
        runs = runs.filter(created_at__lte=f.until)
    return runs


def _matches(f: RunFilter, s: Snapshot, entry: Entry, now: datetime) -> bool:
    if f.statuses and buffered_status(s, entry, now) not in f.statuses:
        return False
    if f.tasks and s.task_identifier not in f.tasks:
        return False
    if f.tags and f.tags.isdisjoint(s.tags) and f.tags.isdisjoint(entry.extra_tags):
        return False
    if f.batch and s.batch_id != f.batch:
        return False
    if f.queues and not any(s.queue == q or (s.queue is None and q == f"task/{s.task_identifier}") for q in f.queues):
        return False
    if f.machines and s.machine not in f.machines:
        return False
    if f.since and s.created_at < f.since:
        return False
    return not (f.until and s.created_at > f.until)


def buffered_status(s: Snapshot, entry: Entry, now: datetime) -> str:
    return presenters.buffered_status(
        s, cancelled=entry.cancelled_at_ms is not None, dead=entry.status is EntryStatus.DEAD, now=now
    )


# ----------------------------------------------------------------------------------------------- pages


@dataclass(frozen=True, slots=True)
class Item:
    """One run of a page: its row, or its buffered entry and parsed snapshot."""

    pos: Pos
    run_id: str
    row: TaskRun | None = None
    entry: Entry | None = None
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Item]
    next: Pos | None  # continue after this position (None: nothing further)
    previous: Pos | None  # what a page[before] cursor starts from (None: this is the first page)
    scan_calls: int  # env_page calls spent (the per-page bound is MAX_SCAN_CALLS)


@dataclass(slots=True)
class _Scan:
    matched: list[Item]
    frontier: Pos | None  # the scan stopped on its bound here; None: the index has nothing more to give
    calls: int = 0


def _scan_buffer(
    buffer: Buffer, env: EnvContext, f: RunFilter, start: Pos | None, *, want: int, descending: bool, now: datetime
) -> _Scan:
    """Step 1 of the module docstring: up to ``want`` matching buffered entries after ``start``."""
    scan = _Scan([], None)
    if not f.buffered_may_match:
        return scan
    # The createdAt filters bound the scan itself: start at ``until``, stop at ``since`` (descending).
    edge = f.until if descending else f.since
    if edge is not None:
        edge_pos: Pos = (_us(edge) + 1, "") if descending else (_us(edge) - 1, "\U0010ffff")
        if start is None or (edge_pos < start if descending else edge_pos > start):
            start = edge_pos
    stop = f.since if descending else f.until
    batch = want if not (f.given or f.since or f.until) else max(want, SCAN_BATCH)
    cursor = start
    while scan.calls < MAX_SCAN_CALLS:
        bound = None if cursor is None else _redis_bound(cursor, descending=descending)
        if bound is not None and not 0 <= bound[0] < _INDEX_MS_LIMIT:  # before 1970 or past the index's range
            if (bound[0] < 0) == descending:
                return scan  # nothing lies beyond it
            bound = None  # everything does: start from the end
        if descending:
            entries = buffer.env_page(org_id=env.org_id, env_id=env.env_id, before=bound, limit=batch)
        else:
            entries = buffer.env_page_after(org_id=env.org_id, env_id=env.env_id, after=bound, limit=batch)
        scan.calls += 1
        entries = _with_snapshots(buffer, env, entries)
        for entry in entries:
            pos = (_created_ms(entry) * 1000, entry.run_id)
            cursor = pos
            if stop is not None and (pos[0] < _us(stop) if descending else pos[0] > _us(stop)):
                return scan  # past the createdAt edge: nothing further can match
            if entry.env_id != env.env_id or entry.status is EntryStatus.ACKED:
                continue  # an acked entry's row is committed: step 2 finds it
            try:
                snapshot = overrides.effective(from_snapshot(entry.snapshot), entry)  # a reschedule shows
            except SnapshotError:
                continue  # the drain turns it into a SYSTEM_FAILURE row; listed once that exists
            if _matches(f, snapshot, entry, now):
                scan.matched.append(Item(pos, entry.run_id, entry=entry, snapshot=snapshot))
        if len(entries) < batch or len(scan.matched) >= want:
            return scan
    scan.frontier = cursor
    return scan


def _created_ms(entry: Entry) -> int:
    assert entry.created_ms is not None, "env_page sets created_ms"
    return entry.created_ms


def _with_snapshots(buffer: Buffer, env: EnvContext, entries: list[Entry]) -> list[Entry]:
    """The entries with their snapshots (one more round trip when the index returned them without)."""
    lacking = [e.run_id for e in entries if not e.snapshot]
    if not lacking:
        return entries
    full = {e.run_id: e for e in buffer.get_many(lacking, org_id=env.org_id) if e is not None}
    return [full.get(e.run_id, e) if not e.snapshot else e for e in entries]


def _rows(
    env: EnvContext, f: RunFilter, start: Pos | None, *, limit: int, descending: bool, full: bool
) -> list[TaskRun]:
    rows = filter_rows(env, f).annotate(cid=Collate("id", "C"))
    if not full:
        rows = rows.defer("payload")
    if start is not None:
        at, run_id = _from_us(start[0]), start[1]
        if descending:
            rows = rows.filter(Q(created_at__lt=at) | Q(created_at=at, cid__lt=run_id))
        else:
            rows = rows.filter(Q(created_at__gt=at) | Q(created_at=at, cid__gt=run_id))
    order = ("-created_at", "-cid") if descending else ("created_at", "cid")
    return list(rows.order_by(*order)[:limit])


def page(
    env: EnvContext,
    f: RunFilter,
    *,
    size: int,
    after: Pos | None = None,
    before: Pos | None = None,
    buffer: Buffer,
    now: datetime,
    full_rows: bool = False,
) -> Page:
    """One page newest first (``after``, or from the top) or the page just before ``before`` (still
    returned newest first). Steps in the module docstring."""
    descending = before is None or after is not None
    start = after if descending else before
    scan = _scan_buffer(buffer, env, f, start, want=size + 1, descending=descending, now=now)
    rows = _rows(env, f, start, limit=size + 1, descending=descending, full=full_rows)
    merged = {item.run_id: item for item in scan.matched}
    merged.update({row.id: Item((_us(row.created_at), row.id), row.id, row=row) for row in rows})
    items = sorted(merged.values(), key=lambda item: item.pos, reverse=descending)
    if scan.frontier is not None:
        frontier = scan.frontier
        items = [i for i in items if (i.pos >= frontier if descending else i.pos <= frontier)]
    more = len(items) > size or scan.frontier is not None
    shown = items[:size]
    if len(items) > size or not shown:
        resume = shown[-1].pos if len(items) > size else scan.frontier
    else:
        resume = scan.frontier if scan.frontier is not None else shown[-1].pos
    if descending:
        nxt = resume if more else None
        prev = shown[0].pos if (after is not None and shown) else None
        return Page(shown, nxt, prev, scan.calls)
    shown.reverse()
    # Going back: ``resume`` is the newest position reached; a further page[before] starts there.
    prev = resume if more else None
    nxt = shown[-1].pos if shown else before
    return Page(shown, nxt, prev, scan.calls)


# ------------------------------------------------------------------------------------------------- API


def page_size(params: Mapping[str, str]) -> int:
    try:
        size = int(params.get("page[size]") or DEFAULT_PAGE_SIZE)
    except ValueError:
        raise QueryError("page[size]: expected an integer") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise QueryError(f"page[size]: must be between 1 and {MAX_PAGE_SIZE}")
    return size


def list_runs(env: EnvContext, params: Mapping[str, str], *, buffer: Buffer, now: datetime) -> dict[str, Any]:
    """``GET /api/v1/runs``: rows and buffered runs in one list (docs/api.md#list-runs)."""
    f = parse_filter(params, now=now)
    size = page_size(params)
    after = decode_cursor(params["page[after]"], "page[after]") if params.get("page[after]") else None
    before = decode_cursor(params["page[before]"], "page[before]") if params.get("page[before]") else None
    result = page(env, f, size=size, after=after, before=before, buffer=buffer, now=now)
    env_doc = {"id": str(env.env_id), "name": env.env_slug}
    data = [{**_document(item, now), "env": env_doc} for item in result.items]
    pagination: dict[str, str] = {}
    if result.next is not None:
        pagination["next"] = encode_cursor(result.next)
    if result.previous is not None:
        pagination["previous"] = encode_cursor(result.previous)
    return {"data": data, "pagination": pagination}


def _document(item: Item, now: datetime) -> dict[str, Any]:
    if item.row is not None:
        return presenters.run_row(item.row, detail=False)
    entry, s = item.entry, item.snapshot
    assert entry is not None and s is not None
    doc = presenters.buffered_run(
        s,
        extra_tags=entry.extra_tags,
        cancelled_at=None if entry.cancelled_at_ms is None else from_ms(entry.cancelled_at_ms),
        cancel_reason=entry.cancel_reason,
        now=now,
        dead_reason=(entry.last_error or "dead-lettered") if entry.status is EntryStatus.DEAD else None,
    )
    for detail_only in ("payload", "error", "triggerFunction", "relatedRuns"):  # as run_row(detail=False)
        doc.pop(detail_only, None)
    return doc


def ids_of(items: Iterable[Item]) -> list[str]:
    return [item.run_id for item in items]
