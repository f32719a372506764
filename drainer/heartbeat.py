"""Drain workers' heartbeats (docs/operations.md#liveness): each Celery worker that consumes the ``drain`` queue
writes its node name and the time into the buffer's Redis every ``INTERVAL_S``, from its own event loop.

Why a consumer bootstep and not Celery's event heartbeat: that one goes to the broker only, needs events and is
off under ``--without-heartbeat``; this one lands where the dashboard and ``/metrics`` already read, and it is
written by the loop that takes tasks, so a worker whose loop is wedged or stopped (SIGSTOP, a debugger, a hung
host) stops beating, while one that is merely busy draining (a solo pool's task of one time budget) beats again
within ``stale_after_ms``. A prefork pool's children are not covered: their hangs show as the drain's missing
progress instead (the shard lock and leases expire). A warm shutdown removes the worker from the list; a killed
one stays there, flagged stale, until pruned an hour later.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from buffer.buffer import Buffer, BufferUnavailable
from buffer.drain_side import DrainBuffer
from mollifier_project.clock import now_ms

log = logging.getLogger(__name__)

DRAIN_QUEUE = "drain"  # settings.CELERY_TASK_ROUTES sends drainer.* here
INTERVAL_S = 2.0
PRUNE_AFTER_MS = 3_600_000  # a worker not heard from for an hour is dropped from the list


def stale_after_ms(time_budget_ms: int) -> int:
    """How long after its last heartbeat a worker counts as gone: three missed beats, plus two drain time budgets
    (a solo pool beats between tasks, and a task runs about one budget, a little more for its last round)."""
    return int(3 * INTERVAL_S * 1000) + 2 * time_budget_ms


def beat(buffer: DrainBuffer, worker: str, *, now_ms: int) -> None:
    """One heartbeat of ``worker``; a Redis outage is logged, not raised (the worker's loop must go on)."""
    try:
        buffer.heartbeat(worker, now_ms=now_ms, prune_before_ms=now_ms - PRUNE_AFTER_MS)
    except BufferUnavailable:
        log.warning("drain worker %s: heartbeat not recorded, the buffer's Redis is unreachable", worker, exc_info=True)


class DrainHeartbeat(bootsteps.StartStopStep):
    """A consumer step: starts beating once the worker consumes its queues, if ``drain`` is one of them."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None
        self.buffer: DrainBuffer | None = None
        self.worker = ""

    def start(self, parent: Any) -> None:
        queues = {queue.name for queue in parent.task_consumer.queues}
        if DRAIN_QUEUE not in queues:
            return
        self.worker = str(parent.hostname)
        self.buffer = Buffer.from_settings()
        self._beat()
        self.tref = parent.timer.call_repeatedly(INTERVAL_S, self._beat)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            parent.timer.cancel(self.tref)
            self.tref = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        if self.buffer is not None:
            try:
                self.buffer.forget_worker(self.worker)
            except BufferUnavailable:
                log.warning("drain worker %s: not removed from the heartbeat list", self.worker, exc_info=True)

    def _beat(self) -> None:
        if self.buffer is not None:
            beat(self.buffer, self.worker, now_ms=now_ms())
