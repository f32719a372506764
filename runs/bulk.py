"""Bulk actions: cancel or replay many runs of one env, rows and buffered entries alike
(docs/architecture.md#bulk-actions).

``create`` stores a ``BulkAction`` (its selection: list filters or run ids) and, after the commit, sends
``runs.signals.bulk_action_created``, on which ``runs.tasks`` sends the Celery task ``runs.run_bulk_action``,
which calls ``execute``. ``execute`` works in chunks of ``CHUNK`` runs:

1. lock the action's row (``SKIP LOCKED``: a second task for the same action returns at once) and stop if
   it is no longer PENDING — an abort is honoured between chunks;
2. take the next chunk: the next ``runs.listing`` page after the stored cursor (a filter, frozen at the
   action's ``created_at`` so runs triggered later are not swept in), or the next slice of the run ids;
3. apply it — cancel: one ``Buffer.cancel_many`` script call flags the buffered entries (the drain then
   writes CANCELED rows), then one UPDATE cancels the rows, including entries that were acked meanwhile;
   replay: a new run per run through the normal trigger path (``runs.trigger``), with a request key
   ``bulk:<action>:<run>`` so a chunk re-run after a crash replays nothing twice;
4. add the chunk's counts and the new cursor to the row in the same transaction, and commit.

A task stops after ``TIME_BUDGET_S`` and sends itself again, so a 100k-run action never holds a worker
(which also drains) for long. Redis or Postgres failing mid-chunk fails the task, which Celery retries;
the chunk is re-run from the stored cursor: cancels are idempotent, replays deduplicated by request key.
Counts: ``total`` runs selected so far (for a filter, known only at the end), ``success`` runs this
action cancelled or replayed, ``failure`` the others (already finished or cancelled, not found, refused).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from buffer.buffer import Buffer
from buffer.values import MAX_CANCEL_CHUNK, EntryStatus
from mollifier_project.clock import from_ms, now_ms
from runs import engine, ids, listing, overrides, replay, trigger
from runs.auth import EnvContext
from runs.bulk_schemas import CreateBulkActionBody, body_field
from runs.locate import Where, locate_many
from runs.models import BulkAction, BulkActionStatus, BulkActionType, Environment, TaskRun
from runs.presenters import iso
from runs.schemas import ReplayBody
from runs.signals import bulk_action_created
from runs.snapshot import Snapshot, SnapshotError, from_snapshot

log = logging.getLogger(__name__)

CHUNK = 500
assert CHUNK <= MAX_CANCEL_CHUNK
TIME_BUDGET_S = 10.0
CANCEL_REASON = "Canceled by bulk action"


class BulkError(ValueError):
    """A selection no run could match or the list would refuse; the message names the field."""


# ------------------------------------------------------------------------------------------- API side


def create(env: EnvContext, body: CreateBulkActionBody, *, now_ms: int) -> BulkAction:
    """Store the action and send its task once the row is committed. Raises ``BulkError``."""
    created = from_ms(now_ms)
    selection: dict[str, Any] = {}
    if body.filter is not None:
        params = body.filter.as_list_params()
        try:
            listing.parse_filter(params, now=created)
        except listing.QueryError as exc:
            name, _, reason = str(exc).partition(": ")
            raise BulkError(f"{body_field(name)}: {reason}") from None
        selection["filter"] = params
    else:
        selection["run_ids"] = list(dict.fromkeys(body.runIds or []))
    action = BulkAction.objects.create(
        id=ids.new_id("bulk", now_ms), env_id=env.env_id, name=body.name or "",
        type=BulkActionType.CANCEL if body.action == "cancel" else BulkActionType.REPLAY,
        total=len(selection.get("run_ids", [])), created_at=created, updated_at=created, **selection,
    )  # fmt: skip
    # ``runs.tasks`` connects the receiver that sends the task: this service knows no Celery.
    transaction.on_commit(lambda: bulk_action_created.send(sender=BulkAction, action_id=action.id))
    return action


def document(action: BulkAction) -> dict[str, Any]:
    """The SDK's ``BulkActionObject``."""
    doc: dict[str, Any] = {
        "id": action.id,
        "type": action.type,
        "status": action.status,
        "counts": {"total": action.total, "success": action.success, "failure": action.failure},
        "createdAt": iso(action.created_at),
    }
    if action.name:
        doc["name"] = action.name
    if action.completed_at is not None:
        doc["completedAt"] = iso(action.completed_at)
    return doc


def retrieve(env: EnvContext, action_id: str) -> BulkAction | None:
    return BulkAction.objects.filter(env_id=env.env_id, id=action_id).first()


def abort(env: EnvContext, action_id: str, *, now_ms: int) -> BulkAction | None:
    """PENDING → ABORTED now; the task sees it before its next chunk. A finished action stays as it is."""
    at = from_ms(now_ms)
    BulkAction.objects.filter(env_id=env.env_id, id=action_id, status=BulkActionStatus.PENDING).update(
        status=BulkActionStatus.ABORTED, abort_requested=True, completed_at=at, updated_at=at
    )
    return retrieve(env, action_id)


def list_actions(env: EnvContext, params: dict[str, str]) -> dict[str, Any]:
    """``GET /api/v1/bulk-actions``: newest first, keyset cursor on (created_at, id) as the run list."""
    size = listing.page_size(params)
    actions = BulkAction.objects.filter(env_id=env.env_id)
    after, before = params.get("page[after]"), params.get("page[before]")
    descending = not before or bool(after)
    if after or before:
        us, action_id = listing.decode_cursor(after or before or "", "page[after]" if after else "page[before]")
        at = listing._from_us(us)
        if descending:
            actions = actions.filter(Q(created_at__lt=at) | Q(created_at=at, id__lt=action_id))
        else:
            actions = actions.filter(Q(created_at__gt=at) | Q(created_at=at, id__gt=action_id))
    page = list(actions.order_by(*(("-created_at", "-id") if descending else ("created_at", "id")))[: size + 1])
    more = len(page) > size
    page = page[:size]
    if not descending:
        page.reverse()
    pagination: dict[str, str] = {}
    if page:
        if more or not descending:
            pagination["next"] = listing.encode_cursor((listing._us(page[-1].created_at), page[-1].id))
        if (descending and after) or (not descending and more):
            pagination["previous"] = listing.encode_cursor((listing._us(page[0].created_at), page[0].id))
    return {"data": [document(a) for a in page], "pagination": pagination}


# ------------------------------------------------------------------------------------------ execution


@dataclass(frozen=True, slots=True)
class Progress:
    chunks: int  # chunks this call applied
    finished: bool  # the action is no longer PENDING (completed or aborted)
    busy: bool = False  # another task holds the action: this one did nothing


@dataclass(frozen=True, slots=True)
class _Chunk:
    items: list[listing.Item]  # filter selection: what the page showed
    run_ids: list[str]
    cursor: str  # where the next chunk starts ("" when there is none)
    position: int
    last: bool


def execute(
    action_id: str,
    *,
    buffer: Buffer,
    clock: Callable[[], int] = now_ms,
    time_budget_s: float = TIME_BUDGET_S,
    max_chunks: int | None = None,
) -> Progress:
    """Apply chunks until the action finishes or ``time_budget_s`` is spent (steps in the module docstring)."""
    started = time.monotonic()
    done = 0
    while True:
        with transaction.atomic():
            action = BulkAction.objects.select_for_update(skip_locked=True).filter(id=action_id).first()
            if action is None:
                return Progress(done, finished=not BulkAction.objects.filter(id=action_id).exists(), busy=True)
            if action.status != BulkActionStatus.PENDING:
                return Progress(done, finished=True)
            env = _env_context(action.env_id)
            at_ms = clock()
            chunk = _next_chunk(action, env, buffer=buffer, now_ms=at_ms)
            if action.type == BulkActionType.CANCEL:
                success, failure = _cancel(env, chunk, buffer=buffer, now_ms=at_ms)
            else:
                success, failure = _replay(env, action, chunk, buffer=buffer, now_ms=at_ms)
            now = from_ms(clock())
            if action.filter is not None:
                action.total += len(chunk.run_ids)
            action.success += success
            action.failure += failure
            action.cursor, action.position, action.updated_at = chunk.cursor, chunk.position, now
            action.chunks += 1
            if chunk.last:
                action.status, action.completed_at = BulkActionStatus.COMPLETED, now
            action.save(update_fields=["total", "success", "failure", "cursor", "position", "updated_at", "chunks",
                                       "status", "completed_at"])  # fmt: skip
        done += 1
        if chunk.last:
            return Progress(done, finished=True)
        if (max_chunks is not None and done >= max_chunks) or time.monotonic() - started >= time_budget_s:
            return Progress(done, finished=False)


def _env_context(env_id: int) -> EnvContext:
    env = Environment.objects.select_related("org").get(id=env_id)
    return EnvContext(env.id, env.org_id, env.slug, env.type, env.org.slug, env.org.mollifier_enrolled)


def _next_chunk(action: BulkAction, env: EnvContext, *, buffer: Buffer, now_ms: int) -> _Chunk:
    if action.run_ids is not None:
        run_ids = action.run_ids[action.position : action.position + CHUNK]
        end = action.position + len(run_ids)
        return _Chunk([], run_ids, "", end, last=end >= len(action.run_ids))
    params = dict(action.filter or {})
    frozen = str(listing._us(action.created_at) // 1000)  # runs triggered after the action are not selected
    to = params.get("filter[createdAt][to]")
    params["filter[createdAt][to]"] = frozen if not to or int(to) > int(frozen) else to
    f = listing.parse_filter(params, now=action.created_at)
    after = listing.decode_cursor(action.cursor, "cursor") if action.cursor else None
    page = listing.page(
        env, f, size=CHUNK, after=after, buffer=buffer, now=from_ms(now_ms),
        full_rows=action.type == BulkActionType.REPLAY,
    )  # fmt: skip
    cursor = listing.encode_cursor(page.next) if page.next is not None else ""
    return _Chunk(page.items, listing.ids_of(page.items), cursor, 0, last=page.next is None)


def _cancel(env: EnvContext, chunk: _Chunk, *, buffer: Buffer, now_ms: int) -> tuple[int, int]:
    """Buffer first, then Postgres: an entry acked between the two is a row by then (its row commits
    before its ack), so every run of the chunk is cancelled on one side or the other."""
    rows = [item.run_id for item in chunk.items if item.row is not None]
    known_rows = set(rows)
    maybe_buffered = [run_id for run_id in chunk.run_ids if run_id not in known_rows]
    flagged = buffer.cancel_many(
        maybe_buffered, org_id=env.org_id, env_id=env.env_id, now_ms=now_ms, reason=CANCEL_REASON
    )
    in_postgres = rows + flagged.to_postgres
    cancelled = engine.cancel_runs(env.env_id, in_postgres, CANCEL_REASON, from_ms(now_ms))
    success = flagged.flagged + len(cancelled)
    return success, len(chunk.run_ids) - success


def _replay(env: EnvContext, action: BulkAction, chunk: _Chunk, *, buffer: Buffer, now_ms: int) -> tuple[int, int]:
    sources = _sources(env, chunk, buffer=buffer)
    success = 0
    for run_id in chunk.run_ids:
        source = sources.get(run_id)
        if source is None:
            continue
        try:
            replay.replay_from(
                env, source, ReplayBody(), buffer=buffer, cfg=settings.MOLLIFIER, now_ms=now_ms,
                request_key=f"bulk:{action.id}:{run_id}",
            )  # fmt: skip
        except trigger.TriggerError as exc:  # refused (backpressure, closed intake…): counted, not retried
            log.warning("bulk replay %s of run %s refused: %s", action.id, run_id, exc.message)
            continue
        success += 1
    return success, len(chunk.run_ids) - success


def _sources(env: EnvContext, chunk: _Chunk, *, buffer: Buffer) -> dict[str, Snapshot | TaskRun]:
    """What each run of the chunk was triggered with: its row, or its buffered snapshot."""
    found: dict[str, Snapshot | TaskRun] = {}
    for item in chunk.items:
        if item.row is not None:
            found[item.run_id] = item.row
        elif item.snapshot is not None:
            found[item.run_id] = item.snapshot
    missing = [run_id for run_id in chunk.run_ids if run_id not in found]
    for run_id, located in locate_many(env, missing, buffer=buffer).items():
        if located.where is Where.ROW and located.row is not None:
            found[run_id] = located.row
        elif located.where is Where.BUFFERED and located.entry is not None:
            if located.entry.status is EntryStatus.DEAD:
                continue
            try:
                found[run_id] = overrides.effective(from_snapshot(located.entry.snapshot), located.entry)
            except SnapshotError:
                continue
    return found
