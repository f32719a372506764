"""A trigger carrying both a request key and an idempotency key claims them in one round trip; the
results must be exactly those of claiming them one after the other (docs/architecture.md#trigger-path, steps 3–4)."""

from __future__ import annotations

import json
import uuid

import pytest

from buffer.buffer import Buffer
from runs.ids import new_run_id
from runs.models import RunStatus, TaskRun
from runs.tenants import ensure_tenant, issue_api_key

TRIGGER = "/api/v1/tasks/hello/trigger"


@pytest.fixture
def tenant(db):
    tenant = ensure_tenant("claims-org", "dev", enrol=True)
    return tenant, issue_api_key(tenant.env)[1]


@pytest.fixture
def buffer(key_prefix, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    return Buffer.from_settings()


def post(client, secret, idempotency_key, request_key):
    return client.post(
        TRIGGER, data=json.dumps({"payload": "{}", "options": {"idempotencyKey": idempotency_key}}),
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}",
        HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY=request_key,
    )  # fmt: skip


def claim_holder(buffer, t, kind, key):
    return buffer._client.get(buffer.keys_for_org(t.org.id).claim(kind, t.env.id, "hello", key))


def test_retry_with_both_keys_returns_the_same_run_and_buffers_it_once(client, tenant, buffer):
    (t, secret) = tenant
    request_key = str(uuid.uuid4())
    first = post(client, secret, "k-1", request_key).json()
    retry = post(client, secret, "k-1", request_key).json()
    assert retry["id"] == first["id"]
    assert buffer.depth(buffer.shard_for(t.org.id), t.env.id) == 1
    assert claim_holder(buffer, t, "req", request_key) == first["id"]
    assert claim_holder(buffer, t, "idem", "k-1") == first["id"]


def test_replayed_request_leaves_no_claim_on_a_new_idempotency_key(client, tenant, buffer):
    """The retry claimed "k-b" for a run it never creates: that claim is released, so "k-b" stays free."""
    (t, secret) = tenant
    request_key = str(uuid.uuid4())
    first = post(client, secret, "k-a", request_key).json()
    replay = post(client, secret, "k-b", request_key).json()
    assert replay == {"id": first["id"], "isCached": False}
    assert claim_holder(buffer, t, "idem", "k-b") is None
    fresh = post(client, secret, "k-b", str(uuid.uuid4())).json()
    assert fresh["isCached"] is False and fresh["id"] != first["id"]


def test_idempotency_hit_leaves_no_claim_on_its_new_request_key(client, tenant, buffer):
    (t, secret) = tenant
    first = post(client, secret, "k-1", str(uuid.uuid4())).json()
    request_key = str(uuid.uuid4())
    cached = post(client, secret, "k-1", request_key).json()
    assert cached == {"id": first["id"], "isCached": True}
    assert claim_holder(buffer, t, "req", request_key) is None
    assert buffer.depth(buffer.shard_for(t.org.id), t.env.id) == 1


def test_a_retry_taking_over_a_dead_request_key_still_finds_the_row_holding_its_idempotency_key(
    client, tenant, buffer, mollifier_settings
):
    """The slow path decides in the same order as the script (docs/architecture.md#trigger-path): once the dead
    attempt's request key is taken over, a key that no claim holds but a row does answers that row (isCached),
    exactly as the same trigger without the dead request key does; it never buffers a second run with it."""
    (t, secret) = tenant
    mollifier_settings(ENABLED=False)  # a direct write: its row holds "k-row", no claim does
    written = post(client, secret, "k-row", str(uuid.uuid4())).json()
    assert claim_holder(buffer, t, "idem", "k-row") is None
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    request_key = str(uuid.uuid4())
    dead = new_run_id(now_ms=1_600_000_000_000)  # an attempt that died years ago, its run written nowhere
    buffer.claim("req", org_id=t.org.id, env_id=t.env.id, task="hello", key=request_key, run_id=dead, ttl_ms=60_000)
    retry = post(client, secret, "k-row", request_key).json()
    assert retry == {"id": written["id"], "isCached": True}
    assert buffer.depth(buffer.shard_for(t.org.id), t.env.id) == 0
    assert claim_holder(buffer, t, "req", request_key) is None  # this call made no run: its takeover is released


def rate_count(buffer, t) -> int:
    """How many triggers the gate has counted for the env (0 when it never evaluated one)."""
    return int(buffer._client.hget(buffer.keys_for_org(t.org.id).rate(t.env.id), "count") or 0)


def test_both_keys_left_by_a_dead_attempt_are_taken_over_and_the_gate_counts_the_trigger_once(client, tenant, buffer):
    """REQ_HELD, then IDEM_HELD, then the decision: three calls of the one script, one run, one count."""
    (t, secret) = tenant
    request_key = str(uuid.uuid4())
    dead = new_run_id(now_ms=1_600_000_000_000)  # died years ago, its run written nowhere
    for kind, key in (("req", request_key), ("idem", "k-dead")):
        buffer.claim(kind, org_id=t.org.id, env_id=t.env.id, task="hello", key=key, run_id=dead, ttl_ms=60_000)
    response = post(client, secret, "k-dead", request_key)
    assert response.status_code == 200
    run_id = response.json()["id"]
    assert response.json() == {"id": run_id, "isCached": False} and run_id != dead
    assert buffer.depth(buffer.shard_for(t.org.id), t.env.id) == 1
    assert claim_holder(buffer, t, "req", request_key) == run_id
    assert claim_holder(buffer, t, "idem", "k-dead") == run_id
    assert rate_count(buffer, t) == 1
    retry = post(client, secret, "k-dead", request_key).json()
    assert retry == {"id": run_id, "isCached": False}  # the request key now answers the new run


def test_a_claim_still_held_by_a_failed_run_gives_the_key_to_a_new_buffered_run(
    client, tenant, buffer, mollifier_settings
):
    """IDEM_HELD by a run whose row failed: its row gives the key up, the key is taken over, the script accepts."""
    (t, secret) = tenant
    mollifier_settings(ENABLED=False)
    failed = post(client, secret, "k-failed", str(uuid.uuid4())).json()["id"]
    TaskRun.objects.filter(id=failed).update(status=RunStatus.SYSTEM_FAILURE)
    buffer.claim("idem", org_id=t.org.id, env_id=t.env.id, task="hello", key="k-failed", run_id=failed, ttl_ms=60_000)
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    again = post(client, secret, "k-failed", str(uuid.uuid4())).json()
    assert again["id"] != failed and again["isCached"] is False
    assert buffer.depth(buffer.shard_for(t.org.id), t.env.id) == 1
    assert claim_holder(buffer, t, "idem", "k-failed") == again["id"]
    assert TaskRun.objects.get(id=failed).idempotency_key is None
