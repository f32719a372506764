"""Durations and delays in the trigger.dev wire format (docs/api.md#trigger-a-task).

``"5m"``, ``"1h30m"``, ``"2w"`` are durations; a delay may also be an ISO date (a JS ``Date`` arrives
as its ISO string). A TTL may be a duration string or a non-negative number of seconds.

Nothing may reach further than ``MAX_DURATION`` (100 years, docs/api.md#bad-input): a longer duration, or a
delay date further ahead, is a ``DurationError`` rather than an ``OverflowError`` from ``timedelta`` or from
the date arithmetic and presentation downstream.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
IDEMPOTENCY_TTL = re.compile(r"^(\d+)([smhd])$")
DEFAULT_IDEMPOTENCY_TTL = timedelta(days=30)
MAX_DURATION = timedelta(days=36_500)
_MAX_SECONDS = int(MAX_DURATION.total_seconds())
_TOO_LONG = f"is longer than the maximum of {MAX_DURATION.days}d (100 years)"


class DurationError(ValueError):
    pass


class DurationTooLong(DurationError):
    """A well-formed duration or date beyond ``MAX_DURATION``."""


def _shown(text: object) -> str:
    """The value for an error message, cut short: a client's 2 MB "delay" is not echoed back."""
    shown = repr(text)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def _seconds(count: str, unit: str) -> int | None:
    """``count`` units in seconds, or None past ``MAX_DURATION`` (also for more digits than ``int`` reads)."""
    if len(count) > 20:
        return None
    seconds = int(count) * _UNIT_SECONDS[unit]
    return seconds if seconds <= _MAX_SECONDS else None


def parse_duration(text: str) -> timedelta:
    """``"1h30m"`` → 90 minutes. Raises ``DurationError`` for anything else (empty, ``"5x"``, ``"-1m"``) and
    for a duration longer than ``MAX_DURATION``."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise DurationError(f"invalid duration {_shown(text)} (expected e.g. 30s, 5m, 1h30m, 2d, 1w)")
    parts = [_seconds(v, u) for v, u in zip(match.groups(), "wdhms", strict=True) if v]
    total = None if None in parts else sum(p for p in parts if p is not None)
    if total is None or total > _MAX_SECONDS:
        raise DurationTooLong(f"duration {_shown(text)} {_TOO_LONG}")
    return timedelta(seconds=total)


def parse_delay(value: str, *, now: datetime) -> datetime | None:
    """When a delayed run becomes due, or None for "no delay" (a past date means no delay)."""
    try:
        until = now + parse_duration(value)
    except DurationTooLong:
        raise
    except DurationError:
        try:
            until = datetime.fromisoformat(value)
        except ValueError:
            raise DurationError(f"invalid delay {_shown(value)} (expected a duration like 5m or an ISO date)") from None
        if until.tzinfo is None:
            raise DurationError(f"invalid delay {_shown(value)}: an ISO date needs a timezone (e.g. Z)") from None
        if until - now > MAX_DURATION:  # aware subtraction never overflows; the UTC date itself might not exist
            raise DurationTooLong(f"date {_shown(value)} is more than {MAX_DURATION.days}d (100 years) ahead") from None
    return until if until > now else None


def parse_ttl(value: str | int | float) -> str:
    """Normalise a run TTL to a duration string (stored as given by the client, as trigger.dev shows it)."""
    if isinstance(value, bool):
        raise DurationError("ttl must be a duration string or a number of seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise DurationError("ttl must be a finite, non-negative number of seconds")
        if value > _MAX_SECONDS:
            raise DurationTooLong(f"{_shown(value)} seconds {_TOO_LONG}")
        return f"{int(value)}s"
    parse_duration(value)
    return value


def idempotency_ttl(value: str | None) -> timedelta:
    """``idempotencyKeyTTL``: ``^\\d+[smhd]$``; an invalid value is ignored (the 30-day default applies), one
    longer than ``MAX_DURATION`` raises ``DurationError``."""
    match = IDEMPOTENCY_TTL.match(value) if isinstance(value, str) else None
    if not match:
        return DEFAULT_IDEMPOTENCY_TTL
    seconds = _seconds(match.group(1), match.group(2))
    if seconds is None:
        raise DurationTooLong(f"duration {_shown(value)} {_TOO_LONG}")
    return timedelta(seconds=seconds)
