"""Celery wiring for the drain: beat → ``fan_out`` → ``drain_shard(k)`` for shards with work.

Thin on purpose: flags, the shard lock and connection hygiene here; every decision in ``drainer.drain``.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections
from redis.exceptions import LockError

from buffer.buffer import Buffer
from drainer import drain

log = logging.getLogger(__name__)

LOCK_MARGIN_MS = 5_000


@shared_task(name="drainer.fan_out", ignore_result=True)
def fan_out() -> list[int]:
    """Send ``drain_shard(k)`` for every shard with work, from an offset that rotates every tick, so
    that with fewer workers than shards no shard waits behind the others every time (DESIGN §8)."""
    cfg = settings.MOLLIFIER
    if not cfg.DRAINER_ENABLED:
        return []
    buffer = Buffer.from_settings()
    tick = int(time.time() / cfg.DRAIN_INTERVAL_S)
    shards = drain.shards_with_work(buffer, offset=tick)
    for shard in shards:
        drain_shard.apply_async((shard,), expires=cfg.DRAIN_INTERVAL_S)
    return shards


@shared_task(name="drainer.drain_shard", ignore_result=True)
def drain_shard(shard: int) -> dict | None:
    """Drain one shard while holding its lock; another holder means someone got there first."""
    cfg = settings.MOLLIFIER
    if not cfg.DRAINER_ENABLED:
        return None
    buffer = Buffer.from_settings()
    lock = buffer.client.lock(
        buffer.keys(shard).drain_lock,
        timeout=(cfg.DRAIN_TIME_BUDGET_MS + LOCK_MARGIN_MS) / 1000,
        blocking=False,
        thread_local=False,
    )
    if not lock.acquire():
        return {"shard": shard, "locked": True}
    close_old_connections()
    try:
        report = drain.drain_shard(buffer, shard=shard, cfg=cfg)
    finally:
        close_old_connections()
        try:
            lock.release()
        except LockError:
            log.warning("drain lock of shard %s expired before release", shard, extra={"shard": shard})
    if report.leased:
        # Not "created": that is a LogRecord attribute, and logging raises KeyError for it in ``extra``.
        log.info(
            "drained shard %s", shard,
            extra={"shard": shard, "leased": report.leased, "created_runs": report.created, "rounds": report.rounds},
        )  # fmt: skip
    return {"shard": shard, **{k: v for k, v in vars(report).items() if v}}
