"""Tenant set-up: organisations, environments and their API keys (service functions for the command and tests)."""

from __future__ import annotations

import secrets
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.db.models import QuerySet

from runs.models import ApiKey, Environment, Organization

_BASE62 = string.digits + string.ascii_letters
_KEY_KIND: dict[str, str] = {  # keyed by the column's value (a str)
    Environment.Type.DEVELOPMENT: "dev",
    Environment.Type.STAGING: "stg",
    Environment.Type.PRODUCTION: "prod",
    Environment.Type.PREVIEW: "preview",
}
_TYPE_BY_SLUG = {
    "dev": Environment.Type.DEVELOPMENT,
    "development": Environment.Type.DEVELOPMENT,
    "staging": Environment.Type.STAGING,
    "stg": Environment.Type.STAGING,
    "prod": Environment.Type.PRODUCTION,
    "production": Environment.Type.PRODUCTION,
    "preview": Environment.Type.PREVIEW,
}
PREFIX_LENGTH = 12


@dataclass(frozen=True)
class Tenant:
    org: Organization
    env: Environment
    org_created: bool
    env_created: bool


def ensure_tenant(org_slug: str, env_slug: str, *, enrol: bool = False, env_type: str | None = None) -> Tenant:
    """Create or reuse the org and env. ``enrol=True`` sets ``feature_flags["mollifier"] = true``;
    ``enrol=False`` leaves an existing org's flags alone (re-running set-up must not un-enrol anyone)."""
    with transaction.atomic():
        org, org_created = Organization.objects.get_or_create(slug=org_slug, defaults={"name": org_slug})
        if enrol and not org.mollifier_enrolled:
            flags = org.feature_flags if isinstance(org.feature_flags, dict) else {}
            org.feature_flags = {**flags, "mollifier": True}
            org.save(update_fields=["feature_flags"])
        kind = env_type or _TYPE_BY_SLUG.get(env_slug, Environment.Type.DEVELOPMENT)
        env, env_created = Environment.objects.get_or_create(org=org, slug=env_slug, defaults={"type": kind})
    return Tenant(org, env, org_created, env_created)


def issue_api_key(env: Environment) -> tuple[ApiKey, str]:
    """Make a new key for ``env``. Returns the row and the secret, which is never stored or shown again.

    Secrets look like ``tr_<dev|stg|prod|preview>_<32 base62>`` (the SDK's plain secret-key shape).
    """
    secret = f"tr_{_KEY_KIND[env.type]}_" + "".join(secrets.choice(_BASE62) for _ in range(32))
    key = ApiKey.objects.create(env=env, secret_hash=ApiKey.hash_secret(secret), prefix=secret[:PREFIX_LENGTH])
    return key, secret


def env_for_secret(secret: str) -> Environment | None:
    """The environment an active secret belongs to, with its org loaded; None for unknown or revoked keys."""
    key = (
        ApiKey.objects.select_related("env__org")
        .filter(secret_hash=ApiKey.hash_secret(secret), revoked_at__isnull=True)
        .first()
    )
    return key.env if key else None


def revoke_keys(keys: QuerySet[ApiKey] | Iterable[int], now: datetime) -> int:
    """Revoke the keys (a queryset or primary keys) that are still active; their secrets stop
    authenticating at once. Returns how many this call revoked: a key already revoked keeps its first
    ``revoked_at``, so the audit trail says when access actually ended."""
    queryset = keys if isinstance(keys, QuerySet) else ApiKey.objects.filter(pk__in=list(keys))
    return queryset.filter(revoked_at__isnull=True).update(revoked_at=now)
