"""Operators' switches: pause and resume draining for an env or an org (entries keep being accepted, the
stale gauge does not page for them), and closing an env's intake (429) — real Redis, Postgres and drain."""

from __future__ import annotations

import json

import pytest
from django.conf import settings

from buffer.buffer import Buffer
from buffer.values import AcceptStatus
from drainer import drain
from drainer.limits import DrainLimits
from runs import auth
from runs.models import TaskRun
from runs.snapshot import to_snapshot
from runs.tenants import ensure_tenant, issue_api_key
from sweep import sweep
from tests.factories import EnvironmentFactory, SnapshotFactory

OLD = 1_000


@pytest.fixture
def buffer(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True)
    return Buffer.from_settings()


def park(buffer: Buffer, env, n: int = 2, *, now_ms: int = OLD) -> list[str]:
    ids = []
    for _ in range(n):
        s = SnapshotFactory(env=env)
        result = buffer.accept(run_id=s.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=now_ms,
                               idempotency=None, max_per_env=100)  # fmt: skip
        assert result.status is AcceptStatus.ACCEPTED
        ids.append(s.id)
    return ids


def drain_all(buffer: Buffer):
    return drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(settings.MOLLIFIER))


@pytest.mark.django_db(transaction=True)
def test_a_paused_env_is_not_drained_until_resumed_and_keeps_accepting(buffer):
    paused, other = EnvironmentFactory(), EnvironmentFactory()
    park(buffer, paused)
    park(buffer, other)
    assert buffer.pause(org_id=paused.org_id, env_id=paused.id)
    assert not buffer.pause(org_id=paused.org_id, env_id=paused.id)  # already paused: says so

    drain_all(buffer)
    park(buffer, paused, 1)  # still accepted while paused

    assert TaskRun.objects.filter(env=other).count() == 2
    assert TaskRun.objects.filter(env=paused).count() == 0
    assert buffer.depth(0, paused.id) == 3
    assert buffer.switches(0).paused(paused.org_id, paused.id)

    assert buffer.resume(org_id=paused.org_id, env_id=paused.id)
    drain_all(buffer)
    assert TaskRun.objects.filter(env=paused).count() == 3


@pytest.mark.django_db(transaction=True)
def test_pausing_an_org_pauses_all_its_envs(buffer):
    env = EnvironmentFactory()
    sibling = EnvironmentFactory(org=env.org)
    park(buffer, env)
    park(buffer, sibling)
    buffer.pause(org_id=env.org_id)

    drain_all(buffer)

    assert TaskRun.objects.count() == 0
    assert buffer.resume(org_id=env.org_id)
    drain_all(buffer)
    assert TaskRun.objects.count() == 4


@pytest.mark.django_db
def test_a_paused_env_does_not_count_stale_nor_age_the_oldest_gauge(buffer):
    paused, stuck = EnvironmentFactory(), EnvironmentFactory()
    park(buffer, paused, now_ms=OLD)
    park(buffer, stuck, now_ms=OLD + 10)
    buffer.pause(org_id=paused.org_id, env_id=paused.id)
    now = OLD + 3_600_000

    report = sweep.sweep_shard(buffer, shard=0, now_ms=now, limits=sweep.SweepLimits(1_000, 100, 100))
    (stats,) = buffer.shard_stats(now_ms=now)

    assert report.counts == {paused.id: 0, stuck.id: 2}
    assert stats.oldest_accepted_ms == OLD + 10  # the paused env's older head does not page
    assert stats.queued == 4  # but its entries are counted


@pytest.mark.django_db(transaction=True)
def test_closing_an_envs_intake_answers_429_and_opening_it_accepts_again(client, key_prefix, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=1_000_000)  # not tripped: closed intake alone diverts
    tenant = ensure_tenant("closed-intake", "dev", enrol=True)
    secret = issue_api_key(tenant.env)[1]
    auth.clear_cache()
    buffer = Buffer.from_settings()

    def post():
        return client.post("/api/v1/tasks/hello/trigger", data=json.dumps({"payload": "{}"}),
                           content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")  # fmt: skip

    assert buffer.close_intake(org_id=tenant.org.id, env_id=tenant.env.id)
    refused = post()
    assert refused.status_code == 429 and "closed" in refused.json()["error"]
    assert "x-ratelimit-reset" in refused.headers
    assert TaskRun.objects.filter(env=tenant.env).count() == 0
    assert buffer.depth(buffer.shard_for(tenant.org.id), tenant.env.id) == 0

    assert buffer.open_intake(org_id=tenant.org.id, env_id=tenant.env.id)
    assert post().status_code == 200
