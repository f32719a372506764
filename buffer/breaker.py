"""The request path's circuit breaker in front of the buffer's Redis (docs/operations.md#redis-timeouts-and-the-circuit-breaker).

A web request that needs Redis waits at most the request timeout (``REDIS_REQUEST_TIMEOUT_MS``) for it. When
Redis hangs, that is still a quarter of a second per call, per request: after ``REDIS_BREAKER_FAILURES``
consecutive failed calls (refused, timed out, reset) the breaker *opens*, and for ``REDIS_BREAKER_OPEN_MS``
every call fails at once with ``BreakerOpen`` (a ``redis.ConnectionError``, so a ``BufferUnavailable``: the
trigger path fails open, the other views answer 503, ``/metrics`` reports ``mollifier_redis_up 0``) without
touching Redis. After that time the next call is let through as a probe (*half-open*): an answer closes the
breaker, a failure opens it again at once.

The breaker sits in the client's connections (``guarded_connection_class``): every command, pipeline and
script call of a request-profile client goes through ``send_packed_command``/``read_response``, so no caller
can forget it. An error *reply* (a script error, OOM) is an answer: Redis is there — except READONLY on a
Sentinel client, whose connection turns it into a ``ConnectionError`` (the server it holds was demoted, and
the next connection asks the sentinels again): no primary is a failure like no Redis.

State is per process, on purpose: the processes learn the same thing independently within a few failed calls
each (each pays at most ``REDIS_BREAKER_FAILURES`` timeouts per outage), and a shared state would have to
live in Redis — the thing that is down. Gunicorn's sync workers serve one request at a time, so a half-open
breaker lets one probe through per process; threads of one process may probe together, which is harmless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection

from buffer import metrics

log = logging.getLogger(__name__)


class BreakerOpen(redis.ConnectionError):
    """The breaker is open: the call was not sent to Redis."""


class Breaker:
    """Consecutive-failure circuit breaker; ``clock`` is monotonic seconds (a test may pass its own)."""

    def __init__(
        self, *, failures: int, open_ms: int, clock: Callable[[], float] = time.monotonic, profile: str | None = None
    ) -> None:
        """``profile`` (the client's: request | operator) labels ``mollifier_redis_breaker_open``; without one the
        breaker exports no state."""
        if failures < 1 or open_ms < 1:
            raise ValueError("failures and open_ms must be >= 1")
        self._open_gauge = None if profile is None else metrics.REDIS_BREAKER_OPEN.labels(profile=profile)
        self.threshold = failures
        self.open_s = open_ms / 1000
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._failing_since: float | None = None  # the first failure since the last answer
        self._failed_last: float | None = None  # the latest failed call since the last answer
        self._open_until: float | None = None  # None: closed

    @property
    def state(self) -> str:
        with self._lock:
            if self._open_until is None:
                return "closed"
            return "open" if self._clock() < self._open_until else "half-open"

    def failing_for_ms(self) -> int | None:
        """How long calls have been seen failing: milliseconds from the first of the failures not followed by
        any answer to the latest of them; None after an answer. Time while the breaker is open does not count
        until a probe fails too: no call was made, and Redis may have answered every other process meanwhile
        (a keyed trigger's fallback relies on this, ``runs.trigger._check_fallback``)."""
        with self._lock:
            if self._failing_since is None or self._failed_last is None:
                return None
            return int((self._failed_last - self._failing_since) * 1000)

    def allow(self) -> bool:
        """Whether a call may go to Redis now (closed, or half-open: a probe). Counts the calls refused."""
        with self._lock:
            if self._open_until is None or self._clock() >= self._open_until:
                return True
        metrics.REDIS_BREAKER_REJECTED.inc()
        return False

    def success(self) -> None:
        with self._lock:
            reopened = self._open_until is not None
            self._failures = 0
            self._failing_since = None
            self._failed_last = None
            self._open_until = None
            if reopened and self._open_gauge is not None:
                self._open_gauge.set(0)  # under the lock: a concurrent failure's set(1) cannot land before it
        if reopened:
            log.warning("buffer Redis answered again: circuit breaker closed")

    def failure(self) -> None:
        with self._lock:
            now = self._clock()
            if self._failing_since is None:
                self._failing_since = now
            self._failed_last = now
            if self._open_until is not None and now < self._open_until:
                return  # already open: a call that was sent before it opened failed too
            self._failures += 1
            was_open = self._open_until is not None  # half-open: the probe failed
            if self._failures < self.threshold and not was_open:
                return
            self._open_until = now + self.open_s
            if self._open_gauge is not None:
                self._open_gauge.set(1)
        metrics.REDIS_BREAKER_OPENED.inc()
        log.warning(
            "buffer Redis %s: circuit breaker open for %.0f ms",
            "still failing" if was_open else f"failed {self.threshold} call(s) in a row",
            self.open_s * 1000,
        )


_FAILURES = (redis.ConnectionError, redis.TimeoutError, OSError)


class _Guarded:
    """Mixin for a redis-py connection class: consult the breaker before sending, report each reply or failure."""

    breaker: Breaker

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        self._guard()
        try:
            return super().connect(*args, **kwargs)  # type: ignore[misc]
        except BreakerOpen:
            raise
        except _FAILURES:
            self.breaker.failure()
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> Any:
        self._guard()
        try:
            return super().send_packed_command(command, check_health)  # type: ignore[misc]
        except BreakerOpen:
            raise
        except _FAILURES:
            self.breaker.failure()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            reply = super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ResponseError:
            self.breaker.success()  # an error reply is still an answer
            raise
        except _FAILURES:
            self.breaker.failure()
            raise
        self.breaker.success()
        return reply

    def _guard(self) -> None:
        if not self.breaker.allow():
            raise BreakerOpen("the buffer's Redis circuit breaker is open (recent calls failed); not sent")


def guarded_connection_class(url: str, breaker: Breaker, base: type | None = None) -> type:
    """The connection class redis-py would pick for ``url`` (TCP, TLS or Unix socket), or ``base`` (a Sentinel
    client's, ``buffer.client``), guarded by ``breaker``."""
    if base is None:
        scheme = url.split("://", 1)[0].lower()
        base = {"rediss": SSLConnection, "unix": UnixDomainSocketConnection}.get(scheme, Connection)
    return type(f"Guarded{base.__name__}", (_Guarded, base), {"breaker": breaker})
