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
import time

from buffer import metrics
from buffer.buffer import Buffer, BufferUnavailable
from mollifier_project.celery import BoundedSender, SendSkipped
from mollifier_project.config import MollifierSettings

log = logging.getLogger(__name__)

DRAIN_TASK = "drainer.drain_shard"
DRAIN_QUEUE = "drain"
SEND_EXPIRY_TICKS = 5
SEND_EXPIRY_BUDGETS = 10
QUIET_AFTER_FAILURE_S = 5.0
"""After a kick the broker did not take, this process sends none for this long: the fan-out's tick sends the
shards meanwhile, so a hung broker costs one trigger ``SEND_TIMEOUT_S`` per process per window, not every
kicking trigger a second."""

sender = BoundedSender(quiet_s=QUIET_AFTER_FAILURE_S)
"""This process's kick connection: kept between kicks, every socket wait bounded (a hung broker must not hold a
request)."""


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
        # No retry, every socket wait bounded (SEND_TIMEOUT_S): a refusing or hung broker costs this request
        # at most about a second, never a worker (docs/operations.md#kick).
        sender.send(DRAIN_TASK, (shard,), now_s=time.monotonic(), queue=DRAIN_QUEUE, expires=expires)
    except SendSkipped:  # a kick failed moments ago in this process: the tick sends the shard
        metrics.DRAIN_KICKS.labels(result="skipped").inc()
    except Exception:  # any broker or serialiser error: the entry is parked, only its kick is lost
        metrics.DRAIN_KICKS.labels(result="failed").inc()
        log.warning("drain kick of shard %s not sent; the fan-out's tick sends it", shard, exc_info=True,
                    extra={"shard": shard, "org_id": org_id})  # fmt: skip
    else:
        metrics.DRAIN_KICKS.labels(result="sent").inc()
        return
    try:
        buffer.clear_send(shard)  # so the next tick, not the mark's lapse, sends the shard
    except BufferUnavailable:
        pass
