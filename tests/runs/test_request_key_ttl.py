"""``MOLLIFIER_REQUEST_KEY_TTL_S`` is how long a request key answers a retry (docs/operations.md#request-key-lifetime),
through the HTTP trigger entry point with real Redis and Postgres: the ``req:`` key a trigger leaves expires after it,
a key recorded in Postgres during a Redis outage is restored with what is left of it, and rows older than it are
deleted by that restore."""

from __future__ import annotations

import json
import time

import pytest

from buffer.buffer import Buffer
from mollifier_project.clock import from_ms
from runs import auth
from runs.models import RequestKey
from runs.tenants import ensure_tenant, issue_api_key

TRIGGER = "/api/v1/tasks/hello/trigger"
TTL_S = 300


@pytest.fixture
def tenant(db, key_prefix, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, DRAINER_ENABLED=True, REQUEST_KEY_TTL_S=TTL_S)
    made = ensure_tenant("rk-ttl", "prod", enrol=True)
    auth.clear_cache()
    return made, issue_api_key(made.env)[1]


def post(client, secret: str, request_key: str) -> dict:
    response = client.post(
        TRIGGER, data=json.dumps({"payload": '{"json":1}'}), content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY=request_key,
    )  # fmt: skip
    assert response.status_code == 200, response.content
    return response.json()


def req_pttl(tenant, key: str) -> int:
    buffer = Buffer.from_settings()
    return buffer._client.pttl(buffer.keys_for_org(tenant.org.id).req(tenant.env.id, "hello", key))


@pytest.mark.parametrize("ttl_s", [TTL_S, 3600])
def test_the_request_key_a_trigger_leaves_lives_the_configured_time(client, tenant, mollifier_settings, ttl_s):
    made, secret = tenant
    mollifier_settings(REQUEST_KEY_TTL_S=ttl_s)

    first = post(client, secret, "req-a")

    assert ttl_s * 1000 - 10_000 < req_pttl(made, "req-a") <= ttl_s * 1000  # before: always 24 h
    assert post(client, secret, "req-a")["id"] == first["id"]


def test_rows_of_a_redis_outage_older_than_the_ttl_are_pruned_and_younger_ones_keep_what_is_left(client, tenant):
    made, secret = tenant
    now_ms = int(time.time() * 1000)
    for key, age_s in (("old", TTL_S + 5), ("young", TTL_S - 100)):
        RequestKey.objects.create(
            env=made.env,
            task_identifier="hello",
            key=key,
            run_id=f"run_{key}",
            created_at=from_ms(now_ms - age_s * 1000),
        )

    post(client, secret, "req-b")  # a fresh shard has no request-key fence: the trigger restores the rows first

    assert list(RequestKey.objects.values_list("key", flat=True)) == ["young"]  # before: "old" kept for 24 h
    assert req_pttl(made, "old") == -2
    assert 90_000 < req_pttl(made, "young") <= 100_000
