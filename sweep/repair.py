"""Repairs an operator makes to the buffer, as service functions: ``manage.py mollifier_buffer`` and the
StuckEntry admin's actions call them (docs/runbook.md#repairs). Each returns one ``Repaired``: every
selected entry counted once, by what really happened to it — changed as asked, a row that already existed,
dead-lettered (again) with the reason, back to retrying, released on an outage, or already handled by
someone else (drained meanwhile, leased by a live drainer, already repaired) — so a repair run twice, or
racing the drain, is safe to read. ``describe`` is the one sentence both interfaces print.

The ones that write rows go through the drain's own path (``drainer.drain.materialise``), so a repaired
entry ends exactly as a drained one would: one row, acked after the commit.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from buffer.buffer import Buffer
from buffer.values import EntryStatus, MutationStatus
from drainer import drain
from drainer.limits import DrainLimits
from drainer.report import Report
from mollifier_project.clock import from_ms
from sweep import services

REDRIVE_BATCH = 1000
OPERATOR_CANCEL_REASON = "Canceled by an operator"
OPERATOR_FAILURE = "failed by an operator"


class Target(Protocol):
    """What a repair needs to find an entry: a ``StuckEntry`` row has these, and so does an ``Entry``."""

    @property
    def run_id(self) -> str: ...
    @property
    def org_id(self) -> int: ...
    @property
    def env_id(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Repaired:
    """What one repair call did, entry by entry: each selected entry is in exactly one count (``held`` is a
    part of ``changed``). ``describe`` turns it into the sentence the admin and the command line print."""

    verb: str  # what ``changed`` means: "requeued", "re-driven", "materialised", "failed", "cancelled"
    changed: int = 0  # the repair asked for: moved in the buffer, or its row written and the entry acked
    already_handled: int = 0  # not this repair's to make: drained, acked, held by a live drainer, not dead
    existed: int = 0  # the run had a row already: the entry was acked, the row left as it was
    cancelled_rows: int = 0  # materialise: the run was cancelled meanwhile, so its row says CANCELED
    failed_rows: int = 0  # materialise, cancel: a SYSTEM_FAILURE row (attempts used up, unreadable snapshot)
    dead: int = 0  # no row could be written: dead-lettered (again), for the reasons below
    retrying: int = 0  # a transient database error: back off and retried by the drain
    released: int = 0  # Postgres was down: back in the queue, unchanged
    held: int = 0  # cancel: flagged while a live drainer holds it; that drainer's ack writes CANCELED
    dead_reasons: tuple[str, ...] = ()

    @property
    def troubled(self) -> bool:
        """Some entries did not end as asked for a reason worth a look (not merely handled by someone else)."""
        return bool(self.dead or self.retrying or self.released)


REASONS_SHOWN = 3
_Repair = TypeVar("_Repair", bound=Callable[..., Repaired])


def describe(done: Repaired) -> str:
    """ "1 materialised, 2 dead-lettered: <reason>, 0 already handled" — the changed and already-handled
    counts always, the others when they happened (docs/runbook.md#repairs)."""
    held = f" ({done.held} held by a drainer, which writes the row)" if done.held else ""
    parts = [f"{done.changed} {done.verb}{held}"]
    for count, text in (
        (done.existed, "already had a row (acked, row unchanged)"),
        (done.cancelled_rows, "written as CANCELED (cancelled meanwhile)"),
        (done.failed_rows, "written as SYSTEM_FAILURE"),
        (done.retrying, "back to retrying (database error)"),
        (done.released, "released unchanged (Postgres unreachable)"),
    ):
        if count:
            parts.append(f"{count} {text}")
    if done.dead:
        reasons = " | ".join(done.dead_reasons[:REASONS_SHOWN]) or "reason not recorded"
        more = " (and other reasons: see the StuckEntry rows)" if len(done.dead_reasons) > REASONS_SHOWN else ""
        parts.append(f"{done.dead} dead-lettered: {reasons}{more}")
    parts.append(f"{done.already_handled} already handled")
    return ", ".join(parts)


def _statuses(buffer: Buffer, targets: Sequence[Target]) -> dict[str, EntryStatus | None]:
    """Each target's status in the buffer now (``None``: gone); one round trip per shard."""
    found: dict[str, EntryStatus | None] = {}
    for shard, group in _by_shard(buffer, targets).items():
        ids = [t.run_id for t in group]
        found.update(zip(ids, buffer.statuses(shard, ids), strict=True))
    return found


def resolve_repaired(
    buffer: Buffer, targets: Sequence[Target], before: dict[str, EntryStatus | None], *, now_ms: int
) -> int:
    """Resolve the StuckEntry rows of the targets this repair dealt with, at once rather than at the next sweep
    (docs/runbook.md#repairs): those whose entry has left the buffer (a row written, acked) and those it moved
    back to a queue (re-driven, requeued: ``QUEUED`` now, something else before). An entry the repair left as
    it was keeps its open row; one that gets stuck again is reopened by the sweep (``services.record``)."""
    after = _statuses(buffer, targets)
    done = [
        run_id for run_id, status in after.items()
        if status in (None, EntryStatus.ACKED)
        or (status is EntryStatus.QUEUED and before.get(run_id) is not EntryStatus.QUEUED)
    ]  # fmt: skip
    return services.resolve(done, now=from_ms(now_ms))


def _resolves_repaired(fn: _Repair) -> _Repair:
    """A repair of chosen targets that also resolves the rows of those it dealt with (``resolve_repaired``)."""

    @functools.wraps(fn)
    def repair(buffer: Buffer, targets: Sequence[Target], *, now_ms: int, **kwargs: Any) -> Repaired:
        before = _statuses(buffer, targets)
        done = fn(buffer, targets, now_ms=now_ms, **kwargs)
        resolve_repaired(buffer, targets, before, now_ms=now_ms)
        return done

    return repair  # type: ignore[return-value]


def _by_shard(buffer: Buffer, targets: Sequence[Target]) -> dict[int, list[Target]]:
    shards: dict[int, list[Target]] = defaultdict(list)
    for target in dict.fromkeys(targets):  # each run once, in order
        shards[buffer.shard_for(target.org_id)].append(target)
    return shards


def redrive(buffer: Buffer, *, now_ms: int, env_id: int | None = None, limit: int | None = None) -> Repaired:
    """Put dead letters back in their queues with attempts reset, so the drain tries them again: every dead
    letter of ``env_id`` (of every env when ``None``) — the explicit "whole env" repair; ``redrive_selected``
    is the one for chosen entries.

    Every shard is visited (a dead letter's env may have been deleted, so its org — and shard — can no
    longer be looked up). ``limit`` caps the total.
    """
    changed = handled = 0
    for shard in range(buffer.shards):
        while limit is None or changed < limit:
            batch = REDRIVE_BATCH if limit is None else min(REDRIVE_BATCH, limit - changed)
            redriven, skipped = buffer.redrive(shard, now_ms=now_ms, limit=batch, env_id=env_id)
            changed, handled = changed + redriven, handled + skipped
            if redriven < batch:
                break
    return Repaired("re-driven", changed, handled)


@_resolves_repaired
def redrive_selected(buffer: Buffer, targets: Sequence[Target], *, now_ms: int) -> Repaired:
    """These dead letters — and only these — back to their queues with attempts reset; one that is not
    DEAD any more (drained, re-driven, requeued) is already handled."""
    changed = handled = 0
    for shard, group in _by_shard(buffer, targets).items():
        for start in range(0, len(group), REDRIVE_BATCH):
            ids = [t.run_id for t in group[start : start + REDRIVE_BATCH]]
            redriven, skipped = buffer.redrive(shard, now_ms=now_ms, limit=len(ids), run_ids=ids)
            changed, handled = changed + redriven, handled + skipped
    return Repaired("re-driven", changed, handled)


@_resolves_repaired
def requeue_now(buffer: Buffer, targets: Sequence[Target], *, now_ms: int) -> Repaired:
    """Retrying entries, dead letters and expired leases to the head of their queues, due now."""
    changed = handled = 0
    for shard, group in _by_shard(buffer, targets).items():
        requeued, skipped = buffer.requeue_now(shard, [t.run_id for t in group], now_ms=now_ms)
        changed, handled = changed + requeued, handled + skipped
    return Repaired("requeued", changed, handled)


@_resolves_repaired
def materialise_now(buffer: Buffer, targets: Sequence[Target], *, now_ms: int, limits: DrainLimits) -> Repaired:
    """Write these entries' rows now, through the drain's path (created, cancelled or failed as a round would)."""
    report, not_taken = _take_and_write(buffer, targets, now_ms=now_ms, limits=limits, fail_with=None)
    return _outcomes(
        "materialised", report, changed=report.created, already_handled=not_taken,
        cancelled_rows=report.cancelled, failed_rows=report.failed,
    )  # fmt: skip


@_resolves_repaired
def fail(buffer: Buffer, targets: Sequence[Target], *, now_ms: int, limits: DrainLimits) -> Repaired:
    """Give up on these entries: a SYSTEM_FAILURE row each (keeping the batch link), then the ack. An entry
    whose row cannot be written (its env is gone) stays DEAD, and is counted and explained as such."""
    report, not_taken = _take_and_write(buffer, targets, now_ms=now_ms, limits=limits, fail_with=OPERATOR_FAILURE)
    return _outcomes("failed", report, changed=report.failed, already_handled=not_taken)


@_resolves_repaired
def cancel(buffer: Buffer, targets: Sequence[Target], *, now_ms: int, limits: DrainLimits) -> Repaired:
    """Cancel these runs: flag each entry (cancel wins, also against a drainer holding it right now), then
    write the CANCELED rows of those no drainer holds."""
    flagged: list[Target] = []
    handled = 0
    for target in dict.fromkeys(targets):
        result = buffer.cancel(
            target.run_id, org_id=target.org_id, env_id=target.env_id, now_ms=now_ms, reason=OPERATOR_CANCEL_REASON
        )
        if result.status in (MutationStatus.ACKED, MutationStatus.NOT_FOUND):
            handled += 1
        else:
            flagged.append(target)
    report, held = _take_and_write(buffer, flagged, now_ms=now_ms, limits=limits, fail_with=None)
    # A flagged entry a live drainer holds is cancelled by that drainer's ack: changed all the same.
    return _outcomes(
        "cancelled", report, changed=report.cancelled + held, already_handled=handled, held=held,
        failed_rows=report.failed,
    )  # fmt: skip


def _outcomes(verb: str, report: Report, *, changed: int, already_handled: int, **rows: int) -> Repaired:
    return Repaired(
        verb, changed, already_handled, existed=report.existed, dead=report.dead, retrying=report.requeued,
        released=report.released, dead_reasons=tuple(report.dead_reasons), **rows,
    )  # fmt: skip


def _take_and_write(
    buffer: Buffer, targets: Sequence[Target], *, now_ms: int, limits: DrainLimits, fail_with: str | None
) -> tuple[Report, int]:
    """Lease the targets no one else holds and write their rows through the drain's path. Returns what the
    drain did with them, and how many were not taken (held by a live drainer, acked, or gone)."""
    total = Report()
    not_taken = 0
    for shard, group in _by_shard(buffer, targets).items():
        entries = buffer.take(shard, [t.run_id for t in group], now_ms=now_ms, lease_ms=limits.lease_ms)
        not_taken += len(group) - len(entries)
        if entries:
            total.add(
                drain.materialise(
                    buffer, shard=shard, entries=entries, limits=limits, now_ms=now_ms, fail_with=fail_with
                )
            )
    return total, not_taken
