"""Django system checks for settings that are valid one by one but wrong together (DESIGN §14).

Registered by ``runs.apps.RunsConfig.ready``. IDs: ``mollifier.E00x`` errors, ``mollifier.W00x`` warnings.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Warning, register


@register("mollifier")
def check_mollifier_settings(app_configs=None, **kwargs):
    cfg = settings.MOLLIFIER
    problems = []
    if cfg.LEASE_MS <= cfg.DRAIN_TIME_BUDGET_MS:
        problems.append(
            Error(
                f"MOLLIFIER_LEASE_MS ({cfg.LEASE_MS}) must exceed MOLLIFIER_DRAIN_TIME_BUDGET_MS "
                f"({cfg.DRAIN_TIME_BUDGET_MS}).",
                hint="A lease that can expire while its shard task is still inside its budget lets a second "
                "drainer reclaim entries that are being materialised.",
                id="mollifier.E001",
            )
        )
    if cfg.MUTATE_WAIT_MS >= cfg.LEASE_MS:
        problems.append(
            Error(
                f"MOLLIFIER_MUTATE_WAIT_MS ({cfg.MUTATE_WAIT_MS}) must be shorter than MOLLIFIER_LEASE_MS "
                f"({cfg.LEASE_MS}).",
                hint="A cancel of a leased run waits for its row; waiting longer than a lease is pointless.",
                id="mollifier.E002",
            )
        )
    if cfg.STALE_THRESHOLD_S * 1000 <= cfg.DRAIN_INTERVAL_S * 1000:
        problems.append(
            Error(
                f"MOLLIFIER_STALE_THRESHOLD_S ({cfg.STALE_THRESHOLD_S}) must exceed MOLLIFIER_DRAIN_INTERVAL_S "
                f"({cfg.DRAIN_INTERVAL_S}).",
                hint="Otherwise every entry waiting for the next drain tick counts as stale and the alert is noise.",
                id="mollifier.E003",
            )
        )
    if cfg.SHADOW_MODE and not cfg.ENABLED:
        problems.append(
            Warning(
                "MOLLIFIER_SHADOW_MODE is on but MOLLIFIER_ENABLED is off: the gate is not evaluated, "
                "so shadow mode logs nothing.",
                id="mollifier.W001",
            )
        )
    if cfg.ENABLED and not cfg.DRAINER_ENABLED:
        problems.append(
            Warning(
                "MOLLIFIER_ENABLED is on but MOLLIFIER_DRAINER_ENABLED is off: buffered runs will wait "
                "until a drainer is enabled somewhere.",
                hint="Fine if another deployment runs the drainer; otherwise enable it.",
                id="mollifier.W002",
            )
        )
    if not settings.DEBUG and settings.SECRET_KEY.startswith("dev-insecure-"):
        problems.append(
            Warning(
                "DJANGO_SECRET_KEY is not set: the development secret key is in use.",
                id="mollifier.W010",
            )
        )
    return problems


@register("mollifier", "redis")
def check_redis_eviction_policy(app_configs=None, **kwargs):
    """A buffer must never lose a run silently: Redis must refuse writes rather than evict (DESIGN §5)."""
    import redis

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
