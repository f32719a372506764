"""The kick (docs/architecture.md#kick): a web process sends a shard's drain task the moment an accept makes
the shard go from no drain task to work due, so a buffered run waits for a worker instead of the fan-out's
next tick. The buffer's accept decides atomically whether this accept is the one (``lib/drain_kick.lua``);
this module only computes the mark's lifetime and sends.

The task is sent by name: the trigger path sits below the drainer (docs/architecture.md#package-layers) and never
imports it. A broker failure never fails the trigger: it is logged and counted, the mark is dropped, and the
fan-out's next tick sends the shard instead.
"""

from __future__ import annotations

import logging

from buffer import metrics
from buffer.buffer import Buffer, BufferUnavailable
from mollifier_project.celery import app
from mollifier_project.config import MollifierSettings

log = logging.getLogger(__name__)

DRAIN_TASK = "drainer.drain_shard"
DRAIN_QUEUE = "drain"
SEND_EXPIRY_TICKS = 5
SEND_EXPIRY_BUDGETS = 10


def send_expiry_s(interval_s: float, *, time_budget_ms: int) -> float:
    """How long a sent shard task may wait in the broker, and its shard's mark with it. Longer than a busy
    shard waits for a worker process (shard tasks of up to ``time_budget_ms`` each ahead of it): a task that
    expired in the queue would lose its shard's place in line to shards sent later, which measured as
    Jain 0.69 over 10 equal orgs with a 1 s expiry (docs/architecture.md#fan-out). At most one waits per
    shard (the mark), so a long expiry piles nothing up; a task lost with a killed worker costs its
    shard this long at most."""
    return max(SEND_EXPIRY_TICKS * interval_s, SEND_EXPIRY_BUDGETS * time_budget_ms / 1000)


def mark_ttl_ms(cfg: MollifierSettings) -> int | None:
    """The kick mark's PX for accepts (the task's broker expiry), or None when kicks are off: the flag, or the
    drainer itself, is off (nothing would run the task)."""
    if not (cfg.DRAIN_KICK and cfg.DRAINER_ENABLED):
        return None
    return int(send_expiry_s(cfg.DRAIN_INTERVAL_S, time_budget_ms=cfg.DRAIN_TIME_BUDGET_MS) * 1000)


def send(buffer: Buffer, *, org_id: int, cfg: MollifierSettings) -> None:
    """Send the drain task of ``org_id``'s shard; its accept set the shard's mark (``kicked``)."""
    shard = buffer.shard_for(org_id)
    expires = send_expiry_s(cfg.DRAIN_INTERVAL_S, time_budget_ms=cfg.DRAIN_TIME_BUDGET_MS)
    try:
        # retry=False: a broker that refuses fails this call at once, never the request's time.
        app.send_task(DRAIN_TASK, args=(shard,), queue=DRAIN_QUEUE, expires=expires, retry=False)
    except Exception:  # any broker or serialiser error: the entry is parked, only its kick is lost
        metrics.DRAIN_KICKS.labels(result="failed").inc()
        log.warning("drain kick of shard %s not sent; the fan-out's tick sends it", shard, exc_info=True,
                    extra={"shard": shard, "org_id": org_id})  # fmt: skip
        try:
            buffer.clear_send(shard)  # so the next tick, not the mark's lapse, sends the shard
        except BufferUnavailable:
            pass
        return
    metrics.DRAIN_KICKS.labels(result="sent").inc()
