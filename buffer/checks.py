"""System checks of the buffer's Redis (the settings' own checks are in ``mollifier_project.checks``)."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.core.checks import CheckMessage, Warning, register


@register("mollifier", "redis")
def check_redis_eviction_policy(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A buffer must never lose a run silently: Redis must refuse writes rather than evict (docs/operations.md#redis)."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.RedisError as exc:
        return [Warning(f"Could not read Redis maxmemory-policy at REDIS_URL: {exc}", id="mollifier.W004")]
    if policy != "noeviction":
        return [
            Warning(
                f"Redis maxmemory-policy is {policy!r}; the buffer needs 'noeviction'.",
                hint="With an evicting policy Redis may silently drop buffered runs under memory pressure.",
                id="mollifier.W003",
            )
        ]
    return []


@register("mollifier", "redis")
def check_redis_persistence(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """An accepted buffered run exists only in Redis until it is drained: without AOF, a Redis crash or
    restart loses every run it holds (docs/operations.md#durability-and-appendfsync)."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=1)
        config = client.config_get("appendonly")
    except redis.RedisError as exc:
        return [Warning(f"Could not read Redis appendonly at REDIS_URL: {exc}", id="mollifier.W004")]
    if config.get("appendonly") != "yes":
        return [
            Warning(
                "Redis runs without AOF (appendonly no): a crash or restart loses every buffered run.",
                hint="Run the buffer's Redis with `appendonly yes` and `appendfsync always` (nothing lost) or "
                "`everysec` (up to about a second of accepts); see docs/operations.md.",
                id="mollifier.W005",
            )
        ]
    return []
