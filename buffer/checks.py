"""System checks of the buffer's Redis (the settings' own checks are in ``mollifier_project.checks``).

The buffer's Redis is ``BUFFER_REDIS_URL`` (else ``REDIS_URL``). On a Redis Cluster every master holds
some shards' entries, so each master is asked and each one that falls short is named
(docs/operations.md#redis-cluster). Behind Sentinel the primary the sentinels name now is asked; its replicas
are not (set the same in every node's configuration: a replica becomes the primary on failover).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from django.conf import settings
from django.core.checks import CheckMessage, Warning, register
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import RedisClusterException

from buffer.client import buffer_redis_url, redis_client
from buffer.cluster import primaries
from mollifier_project.config import redacted_url, redis_location


def _ask_every_master(
    parameter: str, read: Callable[[redis.Redis], str | None] | None = None
) -> tuple[list[tuple[str, str | None]], CheckMessage | None]:
    """``CONFIG GET parameter`` (or ``read``) on the buffer's Redis, or on every master of a cluster:
    ``(node, value)`` each, or a W004 warning when one cannot be read."""
    read = read or (lambda node: node.config_get(parameter).get(parameter))
    url = buffer_redis_url()
    try:
        location = redis_location(url)
        client: Any = redis_client(location, socket_connect_timeout=1, socket_timeout=1)
        try:
            values = []
            for node in primaries(client):
                kwargs = node.get_connection_kwargs()
                values.append((f"{kwargs.get('host')}:{kwargs.get('port')}", read(node)))
            return values, None
        finally:
            client.close()
    except (redis.RedisError, RedisClusterException, ImproperlyConfigured) as exc:  # warn, never crash the check
        return [], Warning(f"Could not read Redis {parameter} of the buffer's Redis ({redacted_url(url)}): {exc}",
                           id="mollifier.W004")  # fmt: skip


def _falling_short(values: list[tuple[str, str | None]], ok: Callable[[str | None], bool]) -> str:
    """The masters whose value is not ``ok`` — "" on a single server (nothing to name), else "on 10.0.0.2:7000 …"."""
    bad = [f"{node} ({value!r})" for node, value in values if not ok(value)]
    return "" if len(values) == 1 else " on " + ", ".join(bad)


@register("mollifier", "redis")
def check_redis_eviction_policy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A buffer must never lose a run silently: Redis must refuse writes rather than evict (docs/operations.md#redis)."""
    values, failure = _ask_every_master("maxmemory-policy")
    if failure:
        return [failure]
    if all(policy == "noeviction" for _, policy in values):
        return []
    policies = sorted({str(policy) for _, policy in values if policy != "noeviction"})
    where = _falling_short(values, lambda policy: policy == "noeviction")
    return [
        Warning(
            f"Redis maxmemory-policy is {', '.join(repr(p) for p in policies)}{where}; the buffer needs 'noeviction'.",
            hint="With an evicting policy Redis may silently drop buffered runs under memory pressure.",
            id="mollifier.W003",
        )
    ]


@register("mollifier", "redis")
def check_redis_persistence(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """An accepted buffered run exists only in Redis until it is drained: without AOF, a Redis crash or
    restart loses every run it holds (docs/operations.md#durability-and-appendfsync)."""
    values, failure = _ask_every_master("appendonly")
    if failure:
        return [failure]
    if all(value == "yes" for _, value in values):
        return []
    where = _falling_short(values, lambda value: value == "yes")
    return [
        Warning(
            f"Redis runs without AOF (appendonly no){where}: a crash or restart loses every buffered run.",
            hint="Run the buffer's Redis with `appendonly yes` and `appendfsync always` (nothing lost) or "
            "`everysec` (up to about a second of accepts); see docs/operations.md.",
            id="mollifier.W005",
        )
    ]


@register("mollifier", "redis")
def check_accept_replicas(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``ACCEPT_DURABILITY=replica`` answers a buffered trigger only once a replica has it: a primary without a
    connected replica answers every one of them 503 after ``ACCEPT_WAIT_MS`` — as after a failover, until the
    old primary or a new replica resyncs (docs/operations.md#redis-sentinel)."""
    if settings.MOLLIFIER.ACCEPT_DURABILITY != "replica":
        return []
    values, failure = _ask_every_master(
        "connected_slaves", lambda node: str(node.info("replication").get("connected_slaves", 0))
    )
    if failure:
        return [failure]
    if all(int(value or 0) >= 1 for _, value in values):
        return []
    where = _falling_short(values, lambda value: int(value or 0) >= 1)
    return [
        Warning(
            f"ACCEPT_DURABILITY=replica, but the buffer's Redis has no connected replica{where}: every trigger "
            "that would be buffered is answered 503 after ACCEPT_WAIT_MS.",
            hint="Add a replica (two behind Sentinel, so that one is left after a failover), or set "
            "MOLLIFIER_ACCEPT_DURABILITY=none; see docs/operations.md#redis-sentinel.",
            id="mollifier.W006",
        )
    ]
