"""The buffer epoch: notice a Redis that lost its data (docs/architecture.md#buffer-epoch).

A buffered run exists only in Redis until it is drained. A Redis without AOF that restarts, a failover to
an empty replica or a FLUSHALL forgets every such run, and nothing else would notice: the depth gauge
simply drops to 0. So each shard carries an epoch in Redis (``B epoch``, ``lua/epoch.lua``), and Postgres
remembers the epoch seen (``BufferEpoch``). ``check`` runs on every drain fan-out tick:

1. Read every shard's epoch, starting one on a shard that has none (one pipelined round trip).
2. The same epochs as this process saw last time: nothing to compare; refresh ``confirmed_at`` at most
   once per ``CONFIRM_EVERY_MS`` (one UPDATE). This is the idle cost: no Postgres query on most ticks.
3. Otherwise compare with Postgres, per shard:

   * no record: a first start (or a new shard, or a new KEY_PREFIX): record it, no alarm;
   * the same epoch: nothing happened;
   * a different epoch (the shard's was gone, so this check or another started a new one; or Redis holds
     another buffer's): the data of that shard is lost. Move the record to the new epoch, conditional on
     the old one — of two checkers that race, only the one whose update matched records the loss — and
     record one ``BufferDataLoss`` for the check, log an ERROR, count it.

What it cannot see: a loss that keeps the epoch (a failover to a lagging replica that has the key but not
the last accepts, an eviction). The accepted/drained/buffered balance in ops/prometheus covers those.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction

from buffer.drain_side import DrainBuffer
from buffer.models import BufferDataLoss, BufferEpoch
from drainer import metrics
from mollifier_project.clock import from_ms

log = logging.getLogger(__name__)

CONFIRM_EVERY_MS = 60_000  # how stale ``confirmed_at`` (the "data was still there" bound of a loss) may get

_seen: dict[str, tuple[tuple[str, ...], int]] = {}
"""Per key prefix: the epochs this process last found equal to Postgres' record, and when it last wrote
``confirmed_at``. Only a shortcut: anything else than an exact match goes to Postgres."""


@dataclass(frozen=True, slots=True)
class EpochCheck:
    """What one check found. ``started``: shards recorded for the first time (no alarm); ``loss``: the loss
    this check recorded (``None`` when nothing was lost, or when another checker recorded it first)."""

    started: list[int] = field(default_factory=list)
    loss: BufferDataLoss | None = None
    compared: bool = False  # False: the epochs were the ones this process already knew (no Postgres read)


def new_epoch(now_ms: int) -> str:
    return f"{secrets.token_hex(8)}:{now_ms}"


def started_ms(epoch: str) -> int | None:
    """When ``epoch`` was started (its ``:<ms>`` suffix), ``None`` for a value this code did not write."""
    _, _, ms = epoch.rpartition(":")
    return int(ms) if ms.isdigit() else None


def check(buffer: DrainBuffer, *, now_ms: int) -> EpochCheck:
    """Compare every shard's epoch in Redis with Postgres' record (module docstring, steps 1–3)."""
    found = buffer.epochs(new_epoch(now_ms))
    epochs = tuple(epoch for epoch, _ in found)
    known = _seen.get(buffer.prefix)
    if known is not None and known[0] == epochs:
        if now_ms - known[1] >= CONFIRM_EVERY_MS:
            BufferEpoch.objects.filter(prefix=buffer.prefix, epoch__in=set(epochs)).update(confirmed_at=from_ms(now_ms))
            _seen[buffer.prefix] = (epochs, now_ms)
        return EpochCheck()
    result = _compare(buffer.prefix, found, now_ms=now_ms)
    _seen[buffer.prefix] = (epochs, now_ms)
    return result


def _compare(prefix: str, found: list[tuple[str, bool]], *, now_ms: int) -> EpochCheck:
    now = from_ms(now_ms)
    records = {r.shard: r for r in BufferEpoch.objects.filter(prefix=prefix, shard__lt=len(found))}
    first = [
        BufferEpoch(prefix=prefix, shard=shard, epoch=epoch, started_at=_started_at(epoch, now), confirmed_at=now)
        for shard, (epoch, _) in enumerate(found)
        if shard not in records
    ]
    if first:
        # A concurrent first check may have recorded the same shard: its record (the same epoch, read from
        # the same key) stands.
        BufferEpoch.objects.bulk_create(first, ignore_conflicts=True)
        log.info("buffer epochs recorded for %s shard(s) of %s", len(first), prefix,
                 extra={"shards": [r.shard for r in first]})  # fmt: skip
    lost: list[tuple[BufferEpoch, str, bool]] = []
    with transaction.atomic():
        for shard, (epoch, started_now) in enumerate(found):
            record = records.get(shard)
            if record is None or record.epoch == epoch:
                continue
            moved = BufferEpoch.objects.filter(pk=record.pk, epoch=record.epoch).update(
                epoch=epoch, started_at=_started_at(epoch, now), confirmed_at=now
            )
            if moved:  # 0: another checker recorded this loss first
                lost.append((record, epoch, started_now))
        loss = _record_loss(prefix, lost, now=now) if lost else None
    if loss is not None:
        metrics.DATA_LOSSES.inc()
        log.error(
            "buffer data loss: the buffer's Redis lost the data of %s (prefix %s), detected %s; the data was still "
            "there at %s. Buffered runs accepted since %s and not yet written to Postgres are gone; their "
            "retrieves answer 404. Found instead: %s. See docs/runbook.md#mollifierbufferdatalost and acknowledge on "
            "/admin/buffer/.",
            _shard_list(loss.shards), prefix, _iso(loss.detected_at), _iso(loss.lost_after), _iso(loss.lost_since),
            loss.found,
            extra={"shards": loss.shards, "data_loss_id": loss.pk, "lost_after": _iso(loss.lost_after)},
        )  # fmt: skip
    return EpochCheck(started=[r.shard for r in first], loss=loss, compared=True)


def _record_loss(prefix: str, lost: list[tuple[BufferEpoch, str, bool]], *, now: datetime) -> BufferDataLoss:
    found = sorted(
        {"no epoch (its keys were gone)" if started_now else f"epoch {epoch}" for _, epoch, started_now in lost}
    )
    return BufferDataLoss.objects.create(
        prefix=prefix,
        shards=[record.shard for record, _, _ in lost],
        detected_at=now,
        lost_after=min(record.confirmed_at for record, _, _ in lost),
        lost_since=min(record.started_at for record, _, _ in lost),
        found="; ".join(found),
    )


def unacknowledged(*, limit: int) -> list[BufferDataLoss]:
    """The ``limit`` newest losses no operator has acknowledged yet: the dashboard's banners."""
    return list(BufferDataLoss.objects.filter(acknowledged_at__isnull=True).order_by("-detected_at")[:limit])


def unacknowledged_count() -> int:
    """How many losses no operator has acknowledged: the gauge ``MollifierBufferDataLost`` reads."""
    return BufferDataLoss.objects.filter(acknowledged_at__isnull=True).count()


def acknowledge(loss_id: int, *, by: str, now: datetime) -> bool:
    """An operator has seen the loss (and done what docs/runbook.md#mollifierbufferdatalost says). Returns whether
    this call acknowledged it: ``False`` when it was already acknowledged or does not exist."""
    return bool(
        BufferDataLoss.objects.filter(pk=loss_id, acknowledged_at__isnull=True).update(
            acknowledged_at=now, acknowledged_by=by[:150]
        )
    )


def _started_at(epoch: str, default: datetime) -> datetime:
    ms = started_ms(epoch)
    return default if ms is None else from_ms(ms)


def _iso(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


def _shard_list(shards: list[int]) -> str:
    if len(shards) == 1:
        return f"shard {shards[0]}"
    if shards == list(range(shards[0], shards[-1] + 1)):
        return f"shards {shards[0]}–{shards[-1]}"
    return "shards " + ", ".join(map(str, shards))
