"""A keyed trigger whose reply was lost while its web lost Redis, then retried and written directly (fail open),
is one run, whichever of the two reaches Postgres first (docs/architecture.md#request-keys-in-the-drain).

Run A: the trigger script accepted it into the buffer and the reply never came back (the web was cut off right
after). Run B: the client's retry with the same ``x-trigger-request-idempotency-key``, failed open once the fence
had lapsed, with its key recorded in Postgres. Both orders, through the real API, the real Redis and the real drain:

(a) B written before A is drained: the drain finds the key held by B and acks A without a row;
(b) A drained before B: B's fail-open write finds A's key recorded by the drain and answers A.

Before the fix each order left two rows for one request key (the hosts test saw 0–2 such pairs per web cut).
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from buffer.buffer import Buffer
from drainer.drain import materialise, run_round
from drainer.limits import DrainLimits
from mollifier_project.clock import now_ms, to_ms
from runs import request_keys
from runs.models import RequestKey, TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.buffer.invariants import assert_consistent
from tests.factories import EnvironmentFactory
from tests.live import free_port

TRIGGER = "/api/v1/tasks/hello/trigger"
FENCE_MS = 300


def post(client, secret, request_key: str, payload: str = "{}"):
    return client.post(
        TRIGGER, data=json.dumps({"payload": payload}), content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY=request_key,
    )  # fmt: skip


def drain(tenant) -> int:
    """Drain the tenant's shard to empty; returns the duplicates the drain acked without a row."""
    buffer = Buffer.from_settings()
    limits = DrainLimits.from_settings(django_settings.MOLLIFIER)
    duplicates = 0
    for _ in range(100):
        report = run_round(buffer, shard=buffer.shard_for(tenant.org.id), limits=limits, now_ms=now_ms())
        duplicates += getattr(report, "duplicate", 0)  # getattr: the test also runs against the code before
        if report.leased == 0:
            return duplicates
    raise AssertionError("the drain did not finish")


def fail_open(client, secret, key: str, settings) -> str:
    """The retry, from a web that cannot reach Redis: 503 while the fence may stand, then a direct write."""
    up = settings.REDIS_URL
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    try:
        early = post(client, secret, key)
        assert early.status_code == 503 and early["x-should-retry"] == "true", early.content
        time.sleep(FENCE_MS / 1000 + 0.1)  # the fence has lapsed, whoever refreshed it last
        retry = post(client, secret, key)
        assert retry.status_code == 200, retry.content
        return retry.json()["id"]
    finally:
        settings.REDIS_URL = up


@pytest.fixture
def tenant_secret(db, key_prefix, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, REQUEST_KEY_FENCE_MS=FENCE_MS)
    tenant = ensure_tenant(f"rk-drain-{uuid.uuid4().hex[:8]}", "prod", enrol=True)
    return tenant, issue_api_key(tenant.env)[1]


def test_a_retry_written_directly_first_makes_the_drain_ack_the_lost_buffered_run_without_a_row(
    client, tenant_secret, settings
):
    tenant, secret = tenant_secret
    key = str(uuid.uuid4())
    lost = post(client, secret, key).json()["id"]  # run A: buffered; its client never saw this answer
    other = post(client, secret, str(uuid.uuid4())).json()["id"]  # a run of another request, same round
    answered = fail_open(client, secret, key, settings)  # run B, written directly with its key in Postgres
    assert answered != lost and TaskRun.objects.filter(id=answered, buffered=False).exists()

    duplicates = drain(tenant)

    # before the fix: {lost, answered, other}, two rows for one request key
    assert set(TaskRun.objects.filter(env=tenant.env).values_list("id", flat=True)) == {answered, other}
    assert duplicates == 1
    # Redis still names the duplicate for the key (its script wrote it): a later retry is answered with B.
    again = post(client, secret, key)
    assert again.status_code == 200 and again.json()["id"] == answered, again.content
    assert RequestKey.objects.get(env=tenant.env, key=key).run_id == answered
    buffer = Buffer.from_settings()
    entry = buffer.get(lost, org_id=tenant.org.id)
    assert entry is None or entry.status == "ACKED"  # acked: lingers for the grace TTL like any acked entry
    assert buffer.depth(buffer.shard_for(tenant.org.id), tenant.env.id) == 0
    assert_consistent(buffer)


def test_a_buffered_run_drained_first_is_the_answer_to_the_retry_that_fails_open(client, tenant_secret, settings):
    tenant, secret = tenant_secret
    key = str(uuid.uuid4())
    lost = post(client, secret, key).json()["id"]  # run A: buffered; its client never saw this answer
    drain(tenant)
    assert TaskRun.objects.filter(id=lost, buffered=True).exists()

    answered = fail_open(client, secret, key, settings)

    assert answered == lost  # before the fix: a new run B, written directly
    assert list(TaskRun.objects.filter(env=tenant.env).values_list("id", flat=True)) == [lost]


def test_only_a_holder_made_after_the_drained_run_and_within_the_key_life_makes_it_a_duplicate(db):
    """A retry is made after the attempt whose answer was lost, and the client holds the retry's answer: a
    holder made after the drained run (within REQUEST_KEY_TTL_S) makes it a duplicate. A holder made before it
    is the lost attempt itself, this run the answered retry: both are written (the key goes to this run)."""
    env = EnvironmentFactory()
    ttl = django_settings.MOLLIFIER.REQUEST_KEY_TTL_S
    t0 = timezone.now()
    for key, run_id, at in [
        ("retried-later", "run_b", t0),  # a fail-open retry of run_1
        ("retried-long-after", "run_c", t0 + timedelta(seconds=ttl + 5)),  # another use of the key
        ("lost-first", "run_d", t0 - timedelta(seconds=5)),  # the attempt run_3 is the retry of
        ("expired", "run_e", t0 - timedelta(seconds=ttl + 5)),
    ]:
        RequestKey.objects.create(env=env, task_identifier="hello", key=key, run_id=run_id, created_at=at)
    drained = [
        request_keys.Drained("run_1", env.id, "hello", "retried-later", to_ms(t0 - timedelta(seconds=3))),
        request_keys.Drained("run_2", env.id, "hello", "retried-long-after", to_ms(t0)),
        request_keys.Drained("run_3", env.id, "hello", "lost-first", to_ms(t0)),
        request_keys.Drained("run_4", env.id, "hello", "expired", to_ms(t0)),
        request_keys.Drained("run_5", env.id, "hello", "new", to_ms(t0)),
        request_keys.Drained("run_6", env.id, "hello", "new", to_ms(t0 + timedelta(seconds=1))),  # same key, same round
    ]
    assert request_keys.claim_drained(drained, ttl_s=ttl, now=t0) == {"run_1": "run_b"}
    assert request_keys.claim_drained(drained[2:3], ttl_s=ttl, now=t0) == {}  # a re-drain keeps its key
    held = dict(RequestKey.objects.filter(env=env).values_list("key", "run_id"))
    assert held == {"retried-later": "run_b", "retried-long-after": "run_c", "lost-first": "run_3",
                    "expired": "run_4", "new": "run_6"}  # fmt: skip


def test_materialise_acks_a_duplicate_that_was_cancelled_and_tagged_without_writing_or_mutating_a_row(
    client, tenant_secret, settings
):
    """What was done on the duplicate meanwhile is dropped: its id was never the answer to the request."""
    tenant, secret = tenant_secret
    key = str(uuid.uuid4())
    lost = post(client, secret, key).json()["id"]
    answered = fail_open(client, secret, key, settings)
    buffer = Buffer.from_settings()
    shard = buffer.shard_for(tenant.org.id)
    limits = DrainLimits.from_settings(django_settings.MOLLIFIER)
    leased = buffer.lease_round(shard, [(tenant.org.id, tenant.env.id, 10)], now_ms=now_ms(), lease_ms=30_000,
                                max_bytes=1 << 20)  # fmt: skip
    assert [e.run_id for e in leased.entries] == [lost]
    buffer.append_tags(lost, org_id=tenant.org.id, env_id=tenant.env.id, tags=["late"], max_tags=10)
    report = materialise(buffer, shard=shard, entries=leased.entries, limits=limits, now_ms=now_ms())
    assert (report.duplicate, report.created) == (1, 0)
    assert list(TaskRun.objects.filter(env=tenant.env).values_list("id", "tags")) == [(answered, [])]
    assert_consistent(buffer)
