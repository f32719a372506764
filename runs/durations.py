"""Durations and delays in the trigger.dev wire format (docs/api.md#trigger-a-task).

``"5m"``, ``"1h30m"``, ``"2w"`` are durations; a delay may also be an ISO date (a JS ``Date`` arrives
as its ISO string). A TTL may be a duration string or a non-negative number of seconds.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
IDEMPOTENCY_TTL = re.compile(r"^(\d+)([smhd])$")
DEFAULT_IDEMPOTENCY_TTL = timedelta(days=30)


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> timedelta:
    """``"1h30m"`` → 90 minutes. Raises ``DurationError`` for anything else (empty, ``"5x"``, ``"-1m"``)."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise DurationError(f"invalid duration {text!r} (expected e.g. 30s, 5m, 1h30m, 2d, 1w)")
    seconds = sum(int(v) * _UNIT_SECONDS[u] for v, u in zip(match.groups(), "wdhms", strict=True) if v)
    return timedelta(seconds=seconds)


def parse_delay(value: str, *, now: datetime) -> datetime | None:
    """When a delayed run becomes due, or None for "no delay" (a past date means no delay)."""
    try:
        until = now + parse_duration(value)
    except DurationError:
        try:
            until = datetime.fromisoformat(value)
        except ValueError:
            raise DurationError(f"invalid delay {value!r} (expected a duration like 5m or an ISO date)") from None
        if until.tzinfo is None:
            raise DurationError(f"invalid delay {value!r}: an ISO date needs a timezone (e.g. Z)") from None
    return until if until > now else None


def parse_ttl(value: str | int | float) -> str:
    """Normalise a run TTL to a duration string (stored as given by the client, as trigger.dev shows it)."""
    if isinstance(value, bool):
        raise DurationError("ttl must be a duration string or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise DurationError("ttl must not be negative")
        return f"{int(value)}s"
    parse_duration(value)
    return value


def idempotency_ttl(value: str | None) -> timedelta:
    """``idempotencyKeyTTL``: ``^\\d+[smhd]$``; an invalid value is ignored (the 30-day default applies)."""
    match = IDEMPOTENCY_TTL.match(value) if isinstance(value, str) else None
    if not match:
        return DEFAULT_IDEMPOTENCY_TTL
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
