"""A stale count the sweep's per-env cap (SWEEP_MAX_ENTRIES_PER_ENV) truncated is shown as a lower bound,
"≥ N", on the dashboard and the shard page; an uncapped count is shown as it is (issue 18, item 7)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from mollifier_project.clock import to_ms
from sweep import sweep
from tests.factories import EnvironmentFactory

pytestmark = pytest.mark.django_db

CAP = 3


def swept_page(admin_client, buffer, accept, mollifier_settings, n: int) -> tuple[str, str]:
    mollifier_settings(SWEEP_MAX_ENTRIES_PER_ENV=CAP)
    env = EnvironmentFactory()
    accept(env, n, now_ms=to_ms(timezone.now() - timedelta(minutes=10)))
    shard = buffer.shard_for(env.org_id)
    limits = sweep.SweepLimits(older_than_ms=60_000, max_orgs=100, max_entries=CAP)
    sweep.sweep_shard(buffer, shard=shard, now_ms=to_ms(timezone.now()), limits=limits)
    dashboard = admin_client.get(reverse("buffer_admin:dashboard"), {"all": "1"})
    shard_page = admin_client.get(reverse("buffer_admin:shard", args=[shard]))
    assert dashboard.status_code == shard_page.status_code == 200
    return dashboard.content.decode(), shard_page.content.decode()


def test_a_count_the_cap_truncated_is_shown_as_at_least(admin_client, buffer, accept, mollifier_settings):
    dashboard, shard_page = swept_page(admin_client, buffer, accept, mollifier_settings, CAP + 2)
    assert f'at least this many">≥ {CAP}</td>' in dashboard  # the shard's row, with why in its title
    assert f"≥ {CAP} stale" in dashboard  # the totals line
    assert f"≥ {CAP} stale" in shard_page


def test_an_uncapped_count_is_shown_exactly(admin_client, buffer, accept, mollifier_settings):
    dashboard, shard_page = swept_page(admin_client, buffer, accept, mollifier_settings, CAP - 1)
    assert "≥" not in dashboard and "≥" not in shard_page
    assert f"{CAP - 1} stale" in dashboard and f"{CAP - 1} stale" in shard_page
