"""Celery wiring for the stale sweep: beat → ``fan_out`` → ``sweep_shard(k)`` for every shard (docs/architecture.md#stale-sweep).

Thin on purpose: the flag, the shard's sweep lock and connection hygiene here; the pass is ``sweep.sweep``.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import close_old_connections

from buffer.buffer import Buffer
from drainer.beat import Fenced
from mollifier_project.clock import now_ms
from sweep import sweep
from sweep.sweep import SweepLimits


@shared_task(name="sweep.fan_out", ignore_result=True, base=Fenced)  # a lapsed beat's tick is dropped
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
    with buffer.shard_lock(shard, "sweep", timeout_s=cfg.SWEEP_INTERVAL_S) as held:
        if not held:
            return {"shard": shard, "locked": True}
        close_old_connections()
        try:
            report = sweep.sweep_shard(buffer, shard=shard, now_ms=now_ms(), limits=SweepLimits.from_settings(cfg))
        finally:
            close_old_connections()
    return report.summary()
