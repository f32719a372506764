"""Bearer key → environment, cached in process memory so a warm buffered trigger makes no Postgres query.

The cache is keyed by the SHA-256 of the secret (the secret itself is never kept) and entries live for
``AUTH_CACHE_TTL_S``: a revoked key or a changed enrolment takes effect within that time on every web
process. Unknown keys are cached too (briefly), so a client hammering with a bad key cannot turn every
request into a query.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from runs.models import ApiKey

AUTH_CACHE_TTL_S = 30.0
NEGATIVE_CACHE_TTL_S = 5.0
_MAX_KNOWN = 10_000
_MAX_UNKNOWN = 1_000


@dataclass(frozen=True, slots=True)
class EnvContext:
    """What the API needs to know about the caller's environment, without touching Postgres again."""

    env_id: int
    org_id: int
    env_slug: str
    env_type: str
    org_slug: str
    enrolled: bool


# Two LRU caches: a flood of bad keys can only evict other bad keys, never the warm good ones that keep
# buffered triggers off Postgres.
_known: OrderedDict[str, tuple[float, EnvContext]] = OrderedDict()
_unknown: OrderedDict[str, float] = OrderedDict()
_lock = threading.Lock()


def _remember(cache: OrderedDict, digest: str, value: object, limit: int) -> None:
    with _lock:
        cache[digest] = value
        cache.move_to_end(digest)
        while len(cache) > limit:
            cache.popitem(last=False)


def authenticate(authorization: str | None, *, now: float | None = None) -> EnvContext | None:
    """The env for an ``Authorization: Bearer <secret>`` header, or None (missing, unknown, revoked)."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    secret = authorization[len("Bearer ") :].strip()
    if not secret:
        return None
    now = time.monotonic() if now is None else now
    digest = ApiKey.hash_secret(secret)
    known = _known.get(digest)
    if known is not None and known[0] > now:
        return known[1]
    if _unknown.get(digest, 0.0) > now:
        return None
    key = ApiKey.objects.select_related("env__org").filter(secret_hash=digest, revoked_at__isnull=True).first()
    if key is None:
        _remember(_unknown, digest, now + NEGATIVE_CACHE_TTL_S, _MAX_UNKNOWN)
        return None
    env = key.env
    ctx = EnvContext(env.id, env.org_id, env.slug, env.type, env.org.slug, env.org.mollifier_enrolled)
    _remember(_known, digest, (now + AUTH_CACHE_TTL_S, ctx), _MAX_KNOWN)
    return ctx


def clear_cache() -> None:
    """Forget every cached key (tests; an operator revoking keys can also wait out the TTL)."""
    with _lock:
        _known.clear()
        _unknown.clear()
