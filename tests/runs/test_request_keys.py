"""``runs.request_keys.restore`` against real Postgres and Redis (docs/api.md#request-idempotency-during-a-redis-outage):
a long outage's keys go back in batches, the fence goes up only once none is left, the caller's own key is always
put back (even one restored before, which a Redis that restarted empty has lost), and expired rows are deleted."""

from __future__ import annotations

from datetime import timedelta

import pytest

from buffer.buffer import Buffer
from mollifier_project.clock import from_ms
from runs import request_keys
from runs.models import RequestKey
from runs.tenants import ensure_tenant

NOW_MS = 1_800_000_000_000
TTL_MS = 24 * 3600 * 1000


@pytest.fixture
def env(db):
    return ensure_tenant("rk-org", "prod", enrol=True).env


def record(env, key: str, run_id: str, *, age_ms: int = 1000, restored: bool = False) -> RequestKey:
    return RequestKey.objects.create(
        env=env, task_identifier="hello", key=key, run_id=run_id, created_at=from_ms(NOW_MS - age_ms),
        restored=restored,
    )  # fmt: skip


def in_redis(buffer: Buffer, env, key: str) -> str | None:
    return buffer._client.get(buffer.keys_for_org(env.org_id).req(env.id, "hello", key))


def fenced(buffer: Buffer, env) -> bool:
    return bool(buffer._client.exists(buffer.keys_for_org(env.org_id).req_fence))


def restore(buffer: Buffer, env, key: str, *, batch: int) -> bool:
    return request_keys.restore(
        buffer, org_id=env.org_id, env_id=env.id, task="hello", key=key, now_ms=NOW_MS, ttl_ms=TTL_MS,
        fence_ms=2000, batch=batch,
    )  # fmt: skip


def test_a_backlog_goes_back_in_batches_and_the_fence_rises_only_when_none_is_left(env, key_prefix):
    buffer = Buffer.from_settings()
    for i in range(5):
        record(env, f"k{i}", f"run_{i}")
    assert restore(buffer, env, "k4", batch=2) is False  # k0, k1, and the caller's own k4
    assert not fenced(buffer, env)
    assert [in_redis(buffer, env, f"k{i}") for i in range(5)] == ["run_0", "run_1", None, None, "run_4"]
    assert restore(buffer, env, "new", batch=2) is False  # k2, k3: two of two, more may wait
    assert restore(buffer, env, "new", batch=2) is True
    assert fenced(buffer, env)
    assert [in_redis(buffer, env, f"k{i}") for i in range(5)] == [f"run_{i}" for i in range(5)]
    assert not RequestKey.objects.filter(restored=False).exists()


def test_the_callers_own_key_goes_back_even_if_restored_before_and_a_key_redis_holds_keeps_its_run(env, key_prefix):
    buffer = Buffer.from_settings()
    record(env, "lost", "run_lost", restored=True)  # restored once, then Redis restarted empty
    record(env, "held", "run_recorded")
    buffer._client.set(buffer.keys_for_org(env.org_id).req(env.id, "hello", "held"), "run_in_redis")
    assert restore(buffer, env, "lost", batch=10) is True
    assert in_redis(buffer, env, "lost") == "run_lost"
    assert in_redis(buffer, env, "held") == "run_in_redis"  # SET NX


def test_rows_older_than_the_request_key_ttl_are_deleted_not_restored(env, key_prefix):
    buffer = Buffer.from_settings()
    record(env, "old", "run_old", age_ms=TTL_MS + 1)
    record(env, "young", "run_young", age_ms=int(timedelta(hours=23).total_seconds() * 1000))
    assert restore(buffer, env, "x", batch=10) is True
    assert list(RequestKey.objects.values_list("key", flat=True)) == ["young"]
    assert in_redis(buffer, env, "old") is None and in_redis(buffer, env, "young") == "run_young"
    assert 0 < buffer._client.pttl(buffer.keys_for_org(env.org_id).req(env.id, "hello", "young")) <= 3600 * 1000
