"""Time as the project passes it around: integer epoch milliseconds, read once per operation.

Every service takes ``now_ms`` (or a ``datetime``) as a parameter so tests control time; only entry
points (views, Celery tasks, commands) read the clock, with ``now_ms()``. The conversions are exact
integer arithmetic: ``datetime.fromtimestamp(ms / 1000)`` goes through a float and can be a microsecond
off, and ``int(dt.timestamp() * 1000)`` a millisecond short for some times.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def from_ms(ms: int) -> datetime:
    """Epoch milliseconds → an aware UTC datetime."""
    return EPOCH + timedelta(0, 0, 0, ms)  # (days, seconds, µs, ms): positional is a third cheaper than ms=…


def to_ms(dt: datetime) -> int:
    """An aware datetime → epoch milliseconds (sub-millisecond parts are dropped)."""
    return (dt - EPOCH) // timedelta(milliseconds=1)
