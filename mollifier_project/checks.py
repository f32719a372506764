"""Django system checks for settings that are valid one by one but wrong together (docs/architecture.md#settings).

Registered by ``runs.apps.RunsConfig.ready``. IDs: ``mollifier.E00x`` errors, ``mollifier.W00x`` warnings.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.http.request import validate_host

from mollifier_project.config import SDK_RETRY_WINDOW_S


@register("mollifier")
def check_mollifier_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    cfg = settings.MOLLIFIER
    problems: list[CheckMessage] = []
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
    packet_host = urlsplit(cfg.PACKET_ORIGIN).hostname if cfg.PACKET_ORIGIN else None
    if packet_host and not validate_host(packet_host, settings.ALLOWED_HOSTS):
        problems.append(
            Error(
                f"MOLLIFIER_PACKET_ORIGIN ({cfg.PACKET_ORIGIN}) names a host DJANGO_ALLOWED_HOSTS does not allow.",
                hint="Every presigned packet URL would answer 400; add the packet host to DJANGO_ALLOWED_HOSTS.",
                id="mollifier.E004",
            )
        )
    if cfg.REQUEST_KEY_FENCE_MS <= cfg.REDIS_REQUEST_TIMEOUT_MS:
        problems.append(
            Error(
                f"MOLLIFIER_REQUEST_KEY_FENCE_MS ({cfg.REQUEST_KEY_FENCE_MS}) must exceed "
                f"MOLLIFIER_REDIS_REQUEST_TIMEOUT_MS ({cfg.REDIS_REQUEST_TIMEOUT_MS}).",
                hint="A keyed trigger that restores the request-key fence calls Redis again at once; a fence that "
                "can lapse within one call answers it 503, and every keyed trigger after a pause that long "
                "restores from Postgres first (docs/api.md#request-idempotency-during-a-redis-outage).",
                id="mollifier.E005",
            )
        )
    if cfg.BEAT_LEASE_MS < 2 * cfg.BEAT_RENEW_MS:
        problems.append(
            Error(
                f"MOLLIFIER_BEAT_LEASE_MS ({cfg.BEAT_LEASE_MS}) must be at least twice MOLLIFIER_BEAT_RENEW_MS "
                f"({cfg.BEAT_RENEW_MS}).",
                hint="The active beat renews its lease every BEAT_RENEW_MS: with less than two renewals per lease, "
                "one slow Redis call hands the ticks to another beat (docs/operations.md#several-beats).",
                id="mollifier.E006",
            )
        )
    ttl_ms = cfg.REQUEST_KEY_TTL_S * 1000
    if ttl_ms <= max(cfg.REQUEST_KEY_FENCE_MS, SDK_RETRY_WINDOW_S * 1000):
        problems.append(
            Error(
                f"MOLLIFIER_REQUEST_KEY_TTL_S ({cfg.REQUEST_KEY_TTL_S}) must exceed the SDK's retry window "
                f"({SDK_RETRY_WINDOW_S} s) and MOLLIFIER_REQUEST_KEY_FENCE_MS ({cfg.REQUEST_KEY_FENCE_MS} ms).",
                hint="A request key that expires while the client may still retry its call lets the retry make a "
                "second run; one that expires within the fence lets a key restored after a Redis outage lapse "
                "before the fence that trusts it (docs/operations.md#request-key-lifetime).",
                id="mollifier.E007",
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
    return problems
