"""Celery wiring for the stale sweep: beat → ``fan_out`` → ``sweep_shard(k)`` for every shard (DESIGN §11).

Thin on purpose: the flag, the shard's sweep lock and connection hygiene here; the pass is ``sweep.sweep``.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections
from redis.exceptions import LockError

from buffer.buffer import Buffer
from sweep import sweep

log = logging.getLogger(__name__)


@shared_task(name="sweep.fan_out", ignore_result=True)
def fan_out() -> list[int]:
    """Send one ``sweep_shard(k)`` per shard, expiring with the interval so ticks never pile up. With the
    sweep switched off, clear every shard's state instead (the stale gauge then reads 0)."""
    cfg = settings.MOLLIFIER
    buffer = Buffer.from_settings()
    if not cfg.STALE_SWEEP_ENABLED:
        sweep.clear_state(buffer)
        return []
    for shard in range(buffer.shards):
        sweep_shard.apply_async((shard,), expires=cfg.SWEEP_INTERVAL_S)
    return list(range(buffer.shards))


@shared_task(name="sweep.sweep_shard", ignore_result=True)
def sweep_shard(shard: int) -> dict:
    """One pass over ``shard`` while holding its sweep lock; another holder means a pass is still running."""
    cfg = settings.MOLLIFIER
    buffer = Buffer.from_settings()
    if not cfg.STALE_SWEEP_ENABLED:
        sweep.clear_state(buffer, [shard])
        return {"shard": shard, "cleared": True}
    lock = buffer.client.lock(
        buffer.keys(shard).sweep_lock, timeout=cfg.SWEEP_INTERVAL_S, blocking=False, thread_local=False
    )
    if not lock.acquire():
        return {"shard": shard, "locked": True}
    close_old_connections()
    try:
        report = sweep.sweep_shard(
            buffer,
            shard=shard,
            now_ms=time.time_ns() // 1_000_000,
            older_than_ms=cfg.STALE_THRESHOLD_S * 1000,
            max_orgs=cfg.SWEEP_MAX_ORGS_PER_PASS,
            max_entries=cfg.SWEEP_MAX_ENTRIES_PER_ENV,
        )
    finally:
        close_old_connections()
        try:
            lock.release()
        except LockError:
            log.warning("sweep lock of shard %s expired before release", shard, extra={"shard": shard})
    return report.summary()
