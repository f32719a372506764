"""Several celery beats, one ticking: a lease in the buffer's Redis decides which (docs/architecture.md#beat-lease).

``LeasedScheduler`` is beat's scheduler when ``MOLLIFIER_BEAT_LEASE_ENABLED`` is on. Every beat tries to take or
renew the lease every ``BEAT_RENEW_MS``; only the holder runs the schedule, so a standby sends nothing and takes
over within ``BEAT_LEASE_MS + BEAT_RENEW_MS`` of the holder's death (its lease lapses, the standby's next try
takes it). A clean shutdown gives the lease up, so a restart hands over at the standby's next try.

Two fences keep a beat that paused (SIGSTOP, a VM freeze, a long GC) from sending after another took over:

* the beat itself sends only while its own lease is still valid by its monotonic clock, counted from the moment it
  *asked* for the renewal (so never later than Redis lets the lease lapse), less a tenth for clock-rate skew;
* every message it sends carries the lease's epoch (a counter bumped at each taking), and ``Fenced`` tasks drop a
  message whose epoch is older than the latest: the one a beat sent just before it froze, delivered after.
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.beat import PersistentScheduler, ScheduleEntry
from django.conf import settings

from buffer.buffer import Buffer, BufferUnavailable
from buffer.drain_side import DrainBuffer
from drainer import metrics
from mollifier_project.clock import now_ms

log = logging.getLogger(__name__)

HOLDER_HEADER = "mollifier_beat"
EPOCH_HEADER = "mollifier_beat_epoch"
SKEW = 0.1  # of the TTL: a local clock that runs this much slower than Redis's still stops sending in time
RETRY_S = 0.5  # after a failed renewal, try again this soon (still bounded by the renew interval)


def holder_id() -> str:
    """This beat as the lease and the gauges name it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


class BeatLease:
    """One beat's view of the lease: which epoch it holds and until when (monotonic seconds) it may send."""

    def __init__(
        self, buffer: DrainBuffer, *, holder: str, ttl_ms: int, renew_ms: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.buffer = buffer
        self.holder = holder
        self.ttl_s = ttl_ms / 1000
        self.renew_s = renew_ms / 1000
        self.clock = clock
        self.epoch = 0  # 0: not held
        self.valid_until = -1.0
        self.next_try = -1.0  # due at once

    def renew_if_due(self) -> None:
        """Take or renew the lease when the renew interval has passed; on a Redis error keep the lease only as
        long as its last renewal lets us (``valid_until``) and try again soon."""
        asked = self.clock()
        if asked < self.next_try:
            return
        try:
            lease = self.buffer.take_beat_lease(
                self.holder, held_epoch=self.epoch, ttl_ms=int(self.ttl_s * 1000), now_ms=now_ms()
            )
        except BufferUnavailable:
            log.warning("beat lease: Redis unreachable, retrying", exc_info=True, extra={"beat": self.holder})
            self.next_try = asked + min(RETRY_S, self.renew_s)
            return
        self.next_try = asked + self.renew_s
        if lease.held_by(self.holder):
            if lease.epoch != self.epoch:
                log.info("beat lease taken: this beat ticks", extra={"beat": self.holder, "epoch": lease.epoch})
            self.epoch = lease.epoch
            self.valid_until = asked + self.ttl_s * (1 - SKEW)
            return
        if self.epoch:
            log.warning("beat lease lost to %s", lease.holder, extra={"beat": self.holder, "epoch": lease.epoch})
        self.epoch = 0
        self.valid_until = -1.0

    def current_epoch(self) -> int:
        """The epoch to send under, 0 when this beat may not send now."""
        return self.epoch if self.epoch and self.clock() < self.valid_until else 0

    def wait_s(self) -> float:
        """Seconds until the next renewal is due."""
        return max(0.0, self.next_try - self.clock())

    def release(self) -> None:
        """Give the lease up (a clean shutdown); a standby takes it at its next try."""
        if not self.epoch:
            return
        try:
            self.buffer.release_beat_lease(self.holder, epoch=self.epoch)
        except BufferUnavailable:
            log.warning("beat lease: not released, Redis unreachable; it lapses by itself", exc_info=True)
        self.epoch = 0
        self.valid_until = -1.0


class LeasedScheduler(PersistentScheduler):
    """Celery's default scheduler (its schedule file kept), run only while this beat holds the beat lease."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cfg = settings.MOLLIFIER
        self.lease = BeatLease(
            Buffer.from_settings(), holder=holder_id(), ttl_ms=cfg.BEAT_LEASE_MS, renew_ms=cfg.BEAT_RENEW_MS
        )
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """A standby only tries the lease; the holder runs the schedule, waking for its next renewal too."""
        self.lease.renew_if_due()
        if not self.lease.current_epoch():
            return self.lease.wait_s()
        return min(super().tick(*args, **kwargs), self.lease.wait_s())

    def apply_async(self, entry: ScheduleEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        """Send only under a valid lease, with its holder and epoch in the message headers (``Fenced``)."""
        epoch = self.lease.current_epoch()
        if not epoch:
            log.warning("beat lease lapsed before %s was sent: not sent", entry.task, extra={"beat": self.lease.holder})
            return None
        stamped = copy.copy(entry)
        options = dict(entry.options or {})
        options["headers"] = {**options.get("headers", {}), HOLDER_HEADER: self.lease.holder, EPOCH_HEADER: epoch}
        stamped.options = options
        return super().apply_async(stamped, producer, advance, **kwargs)

    def close(self) -> None:
        self.lease.release()
        super().close()


def sent_epoch(task: Task[Any, Any]) -> int | None:
    """The beat epoch a task's message carries; ``None`` when it was not sent by a leased beat. A worker puts
    message headers on the request itself; an eager ``apply(headers=…)`` keeps them in ``request.headers``."""
    request = task.request
    value = getattr(request, EPOCH_HEADER, None)
    if value is None:
        value = (request.headers or {}).get(EPOCH_HEADER)
    return None if value is None else int(value)


class Fenced(Task):  # type: ignore[type-arg]
    """A scheduled task that does nothing when its message comes from a beat that has lost the lease since:
    its epoch is older than the latest. One Redis GET per run of a stamped message; unstamped runs as is."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        epoch = sent_epoch(self)
        if epoch is not None:
            latest = Buffer.from_settings().beat_epoch()
            if epoch < latest:
                metrics.BEAT_FENCED.inc()
                log.warning(
                    "%s sent under beat epoch %s, the lease's is %s: dropped", self.name, epoch, latest,
                    extra={"beat": getattr(self.request, HOLDER_HEADER, None), "epoch": epoch},
                )  # fmt: skip
                return None
        return super().__call__(*args, **kwargs)
