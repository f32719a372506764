"""Repairs an operator makes to the buffer, as service functions: ``manage.py mollifier_buffer`` and the
StuckEntry admin's actions call them (docs/runbook.md). Each reports how many entries it changed and how
many someone else had already handled (drained meanwhile, leased by a live drainer, already repaired), so a
repair run twice, or racing the drain, is safe to read.

The ones that write rows go through the drain's own path (``drainer.drain.materialise``), so a repaired
entry ends exactly as a drained one would: one row, acked after the commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from buffer.buffer import Buffer
from buffer.values import MutationStatus
from drainer import drain
from drainer.limits import DrainLimits

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
    changed: int
    already_handled: int


def _by_shard(buffer: Buffer, targets: Sequence[Target]) -> dict[int, list[Target]]:
    shards: dict[int, list[Target]] = defaultdict(list)
    for target in dict.fromkeys(targets):  # each run once, in order
        shards[buffer.shard_for(target.org_id)].append(target)
    return shards


def redrive(buffer: Buffer, *, now_ms: int, env_id: int | None = None, limit: int | None = None) -> Repaired:
    """Put dead letters back in their queues with attempts reset, so the drain tries them again.

    Every shard is visited (a dead letter's env may have been deleted, so its org — and shard — can no
    longer be looked up). ``env_id`` restricts it to one env; ``limit`` caps the total.
    """
    changed = handled = 0
    for shard in range(buffer.shards):
        while limit is None or changed < limit:
            batch = REDRIVE_BATCH if limit is None else min(REDRIVE_BATCH, limit - changed)
            redriven, skipped = buffer.redrive(shard, now_ms=now_ms, limit=batch, env_id=env_id)
            changed, handled = changed + redriven, handled + skipped
            if redriven < batch:
                break
    return Repaired(changed, handled)


def requeue_now(buffer: Buffer, targets: Sequence[Target], *, now_ms: int) -> Repaired:
    """Retrying entries, dead letters and expired leases to the head of their queues, due now."""
    changed = handled = 0
    for shard, group in _by_shard(buffer, targets).items():
        requeued, skipped = buffer.requeue_now(shard, [t.run_id for t in group], now_ms=now_ms)
        changed, handled = changed + requeued, handled + skipped
    return Repaired(changed, handled)


def materialise_now(buffer: Buffer, targets: Sequence[Target], *, now_ms: int, limits: DrainLimits) -> Repaired:
    """Write these entries' rows now, through the drain's path (created, cancelled or failed as a round would)."""
    return _take_and_write(buffer, targets, now_ms=now_ms, limits=limits, fail_with=None)


def fail(buffer: Buffer, targets: Sequence[Target], *, now_ms: int, limits: DrainLimits) -> Repaired:
    """Give up on these entries: a SYSTEM_FAILURE row each (keeping the batch link), then the ack."""
    return _take_and_write(buffer, targets, now_ms=now_ms, limits=limits, fail_with=OPERATOR_FAILURE)


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
    _take_and_write(buffer, flagged, now_ms=now_ms, limits=limits, fail_with=None)
    # A flagged entry a live drainer holds is cancelled by that drainer's ack: changed all the same.
    return Repaired(len(flagged), handled)


def _take_and_write(
    buffer: Buffer, targets: Sequence[Target], *, now_ms: int, limits: DrainLimits, fail_with: str | None
) -> Repaired:
    changed = handled = 0
    for shard, group in _by_shard(buffer, targets).items():
        entries = buffer.take(shard, [t.run_id for t in group], now_ms=now_ms, lease_ms=limits.lease_ms)
        released = 0
        if entries:
            report = drain.materialise(
                buffer, shard=shard, entries=entries, limits=limits, now_ms=now_ms, fail_with=fail_with
            )
            released = report.released  # Postgres was down: back in the queue, not repaired
        changed, handled = changed + len(entries) - released, handled + len(group) - len(entries)
    return Repaired(changed, handled)
