"""Celery wiring for the drain: beat → ``fan_out`` → ``drain_shard(k)`` for shards with work; with kicks on, an
accept into an idle shard sends its task at once (``runs.kick``) and a task that ends with work due sends its
own successor, so the tick is the safety net (docs/architecture.md#kick).

Thin on purpose: flags, the shard lock and connection hygiene here; every decision in ``drainer.drain``.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from buffer.buffer import Buffer, BufferUnavailable
from buffer.drain_side import DrainBuffer
from drainer import drain, epochs, metrics
from drainer.beat import Fenced
from drainer.limits import DrainLimits
from drainer.report import Report
from mollifier_project.clock import now_ms
from runs import engine
from runs.kick import send_expiry_s as send_expiry_s

log = logging.getLogger(__name__)

LOCK_MARGIN_MS = 5_000
LOCK_WAIT_MS = 5_000  # a row lock the drain waits for longer than this fails the statement (retried)


@shared_task(name="drainer.fan_out", ignore_result=True, base=Fenced)  # a lapsed beat's tick is dropped
def fan_out() -> list[int]:
    """Send ``drain_shard(k)`` for every shard with work, from an offset that rotates every tick, so
    that with fewer workers than shards no shard waits behind the others every time
    (docs/architecture.md#fan-out)."""
    cfg = settings.MOLLIFIER
    buffer = Buffer.from_settings()
    now = now_ms()
    # Whether or not the drainer is on: the tick-age gauge says whether beat runs (docs/operations.md#liveness).
    # A chart sample is due on one tick per CHART_SAMPLE_S, asked in the tick mark's own round trip.
    gate_ms = chart_gate_ms(now, every_s=cfg.CHART_SAMPLE_S, interval_s=cfg.DRAIN_INTERVAL_S)
    chart_due = buffer.mark_fan_out_tick(now_ms=now, chart_every_ms=gate_ms)
    shards: list[int] = []
    if cfg.DRAINER_ENABLED:
        tick = int(now / 1000 / cfg.DRAIN_INTERVAL_S)
        expires_s = send_expiry_s(cfg.DRAIN_INTERVAL_S, time_budget_ms=cfg.DRAIN_TIME_BUDGET_MS)
        shards = buffer.claim_sends(drain.shards_with_work(buffer, offset=tick), ttl_ms=int(expires_s * 1000))
        for shard in shards:
            drain_shard.apply_async((shard,), expires=expires_s)
        check_epochs(buffer)
    if chart_due:  # after the sends, so they never wait for it; also with the drainer off (the charts show it)
        record_chart_samples(buffer, now_ms=now, every_s=cfg.CHART_SAMPLE_S)
    return shards


def chart_gate_ms(now_ms: int, *, every_s: int, interval_s: float) -> int:
    """How long this tick would hold the chart-sample gate, or 0 when it need not ask for it
    (docs/operations.md#dashboard-charts). Only the ticks in the first two tick intervals of each ``every_s``
    window ask, so the other ticks cost exactly what they did before the charts; two intervals, so that one
    late tick does not lose the window's sample. The gate lives half a window: one tick of the window wins it,
    and it is free again by the next window. ``every_s`` 0: the charts are off."""
    if every_s <= 0:
        return 0
    every_ms = every_s * 1000
    if now_ms % every_ms >= 2 * interval_s * 1000:
        return 0
    return max(1, every_ms // 2)


def record_chart_samples(buffer: Buffer, *, now_ms: int, every_s: int) -> None:
    """The dashboard charts' sample of every shard (``Buffer.record_chart_samples``) on the tick that won it. A
    failure costs one missing sample (a gap in the charts), never the tick's sends."""
    try:
        buffer.record_chart_samples(now_ms=now_ms, every_s=every_s)
    except BufferUnavailable:
        log.warning("chart samples skipped: the buffer's Redis is unreachable", exc_info=True)


def check_epochs(buffer: DrainBuffer) -> None:
    """Notice a Redis that lost its data (``drainer.epochs``), after the tick's sends so the drain never waits
    for it. One Redis round trip per tick; Postgres only when an epoch changed, and once a minute. A Postgres
    outage skips the check (the next tick after it retries; the drain has its own circuit)."""
    try:
        epochs.check(buffer, now_ms=now_ms())
    except DatabaseError:
        log.warning("buffer epoch check skipped: Postgres unreachable", exc_info=True)
        close_old_connections()


def shard_lock_ms(limits: DrainLimits) -> int:
    """How long a shard task's lock lives (PX): its time budget plus a margin for the round it finishes past
    the budget — ``LOCK_MARGIN_MS``, or half the gap between the budget and ``LEASE_MS`` when that is
    shorter. The lock therefore always expires before the leases its holder took (``mollifier.E001`` keeps
    the lease above the budget): a holder that froze or hung gives its shard up to the next task while its
    own leased entries still wait for their lease, and the rest of the shard is drained within one lease
    (docs/architecture.md#shard-lock). Two holders after an expiry are safe: each lease is an atomic pop."""
    return limits.time_budget_ms + min(LOCK_MARGIN_MS, (limits.lease_ms - limits.time_budget_ms) // 2)


@shared_task(name="drainer.drain_shard", ignore_result=True)
def drain_shard(shard: int) -> dict[str, object] | None:
    """Drain one shard while holding its lock; another holder means someone got there first."""
    cfg = settings.MOLLIFIER
    if not cfg.DRAINER_ENABLED:
        return None
    buffer = Buffer.from_settings()
    if not cfg.DRAIN_KICK:
        buffer.clear_send(shard)  # before the lock: work that arrives while this task drains gets the next tick's task
    limits = DrainLimits.from_settings(cfg)
    with buffer.shard_lock(shard, "drain", timeout_s=shard_lock_ms(limits) / 1000) as held:
        if not held:
            # With kicks on the holder's end decides the mark (``successor``); it is not this task's to drop.
            return {"shard": shard, "locked": True}
        if cfg.DRAIN_KICK:
            buffer.hold_send(shard, ttl_ms=shard_lock_ms(limits))  # accepts meanwhile kick nothing: we take them
        close_old_connections()
        try:
            bound = limits.lease_ms // 2  # a frozen transaction ends, and its row locks go, well before its leases
            # A lock wait ends before the statement's own timeout, so it is told apart (55P03: the round's
            # other entries are then written one by one, drainer/drain.py).
            lock_ms = min(LOCK_WAIT_MS, bound // 2)
            with engine.bounded_statements(statement_ms=bound, lock_ms=lock_ms, idle_ms=bound):
                report = drain.drain_shard(buffer, shard=shard, limits=limits, clock=buffer.server_time_ms)
        finally:
            close_old_connections()
    if cfg.DRAIN_KICK:
        successor(buffer, shard, report=report, limits=limits, interval_s=cfg.DRAIN_INTERVAL_S)
    if report.leased:
        # Not "created": that is a LogRecord attribute, and logging raises KeyError for it in ``extra``.
        log.info(
            "drained shard %s", shard,
            extra={"shard": shard, "leased": report.leased, "created_runs": report.created, "rounds": report.rounds},
        )  # fmt: skip
    return {"shard": shard, **{k: v for k, v in vars(report).items() if v}}


def successor(buffer: DrainBuffer, shard: int, *, report: Report, limits: DrainLimits, interval_s: float) -> bool:
    """After the lock is released (a successor sent earlier would find it held and end): keep the shard's mark
    and send the next task if work is still due, or drop the mark (``Buffer.next_send``). The successor joins
    the drain queue's tail, so shards take turns in the broker's order. A task whose circuit is open, or that
    leased nothing, has no successor: the tick sends the shard once it can be drained, instead of a loop of
    tasks that end at once. Returns whether one was sent."""
    progressed = (report.leased > 0 or report.reclaimed > 0) and not report.circuit_open
    expires = send_expiry_s(interval_s, time_budget_ms=limits.time_budget_ms)
    if not buffer.next_send(shard, now_ms=buffer.server_time_ms(), ttl_ms=int(expires * 1000), progressed=progressed):
        return False
    try:
        drain_shard.apply_async((shard,), expires=expires, retry=False)
    except Exception:  # the broker refused it: drop the mark, so the next tick sends the shard
        log.warning("successor of shard %s not sent", shard, exc_info=True, extra={"shard": shard})
        buffer.clear_send(shard)
        return False
    metrics.SUCCESSORS.inc()
    return True
