"""Friendly ids, minted at trigger time before any row exists (docs/architecture.md#vocabulary).

``run_`` + 25 lowercase base-32 characters: 10 characters of millisecond timestamp (so ids sort by
creation time and btree inserts stay at the right edge) and 15 characters (75 bits) of randomness.
"""

from __future__ import annotations

import secrets

from mollifier_project import clock

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base-32, lowercase: no i, l, o, u.
_TIME_CHARS = 10
_RANDOM_CHARS = 15


def _encode(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 32)
        chars.append(ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """A new time-ordered id, e.g. ``new_id("run")`` → ``run_01jq…``."""
    if now_ms is None:
        now_ms = clock.now_ms()
    return f"{prefix}_{_encode(now_ms, _TIME_CHARS)}{_encode(secrets.randbits(5 * _RANDOM_CHARS), _RANDOM_CHARS)}"


def minted_ms(friendly_id: str) -> int | None:
    """When an id of ``new_id`` was minted (its timestamp characters), ``None`` for anything else."""
    _, sep, body = friendly_id.partition("_")
    if not sep or len(body) != _TIME_CHARS + _RANDOM_CHARS or any(c not in ALPHABET for c in body):
        return None
    value = 0
    for c in body[:_TIME_CHARS]:
        value = value * 32 + ALPHABET.index(c)
    return value


def new_run_id(now_ms: int | None = None) -> str:
    return new_id("run", now_ms)


def new_batch_id(now_ms: int | None = None) -> str:
    return new_id("batch", now_ms)


def timestamp_ms(friendly_id: str) -> int | None:
    """When an id was minted (its embedded millisecond clock), or None if it is not one of ours."""
    _, _, body = friendly_id.partition("_")
    if len(body) != _TIME_CHARS + _RANDOM_CHARS:
        return None
    value = 0
    for char in body[:_TIME_CHARS]:
        digit = ALPHABET.find(char)
        if digit < 0:
            return None
        value = value * 32 + digit
    return value
