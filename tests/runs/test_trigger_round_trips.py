"""What one trigger costs through the HTTP API: Redis round trips and Postgres queries (docs/architecture.md#trigger-path),
and the fault paths of the one-round-trip script.

A round trip is one ``send_packed_command`` of redis-py's connection — one write of one command or of a whole
pipeline, then its replies. The counter wraps that method and calls through: the real Redis answers.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from redis.connection import AbstractConnection

from buffer import metrics
from buffer.buffer import Buffer
from runs import auth
from runs.models import RequestKey, TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.live import free_port

TRIGGER = "/api/v1/tasks/hello/trigger"


@pytest.fixture
def round_trips(monkeypatch):
    """A list that gets one item per Redis round trip made while the test runs."""
    sent: list[int] = []
    original = AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        sent.append(1)
        return original(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    return sent


def tenant_and_secret(slug: str, *, enrol: bool):
    tenant = ensure_tenant(slug, "prod", enrol=enrol)
    return tenant, issue_api_key(tenant.env)[1]


def post(client, secret, *, idempotency_key: str | None = None, request_key: str | None = None):
    options = {"tags": ["a", "b"], "ttl": "1h", "metadata": {"source": "checkout"}}
    if idempotency_key:
        options |= {"idempotencyKey": idempotency_key, "idempotencyKeyTTL": "10m"}
    headers = {"HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY": request_key} if request_key else {}
    return client.post(
        TRIGGER, data=json.dumps({"payload": '{"json":{"a":1}}', "options": options}),
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}", **headers,
    )  # fmt: skip


@pytest.mark.parametrize("keys", [(True, True), (True, False), (False, True), (False, False)],
                         ids=["both-keys", "request-key", "idempotency-key", "no-key"])  # fmt: skip
def test_a_warm_buffered_trigger_is_one_redis_round_trip_and_no_postgres_query_unless_a_new_key_is_looked_up(
    client, db, key_prefix, mollifier_settings, round_trips, statements, keys
):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    tenant, secret = tenant_and_secret("rt-buffered", enrol=True)
    auth.clear_cache()
    assert post(client, secret, request_key=str(uuid.uuid4())).status_code == 200  # warms key cache and scripts
    assert post(client, secret, idempotency_key=uuid.uuid4().hex).status_code == 200  # and the accept script
    with_request, with_idem = keys
    round_trips.clear()
    statements.clear()
    # A new idempotency key nobody claims may still be held by a row whose claim was cut (drained, or written
    # directly): one lookup on the unique index — the price of claims that do not outlive their use
    # (docs/architecture.md#idempotency). The env's last trigger was mollified, so the lookup comes first and the
    # script accepts in the same call. An unkeyed trigger stays at one round trip, no query.
    response = post(
        client, secret, idempotency_key=uuid.uuid4().hex if with_idem else None,
        request_key=str(uuid.uuid4()) if with_request else None,
    )  # fmt: skip
    assert response.status_code == 200, response.content
    assert len(statements) == (1 if with_idem else 0), statements
    assert len(round_trips) == 1
    entry = Buffer.from_settings().get(response.json()["id"], org_id=tenant.org.id)
    assert entry is not None and entry.status == "QUEUED"


def test_a_warm_direct_trigger_is_one_redis_round_trip_before_its_insert(
    client, db, key_prefix, mollifier_settings, round_trips
):
    """Not enrolled: the script claims the request key, checks the idempotency key without claiming it, and
    says pass through; no count, no snapshot sent."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    _, secret = tenant_and_secret("rt-direct", enrol=False)
    assert post(client, secret, request_key=str(uuid.uuid4())).status_code == 200
    round_trips.clear()
    response = post(client, secret, idempotency_key=uuid.uuid4().hex, request_key=str(uuid.uuid4()))
    assert response.status_code == 200
    assert len(round_trips) == 1
    assert TaskRun.objects.filter(id=response.json()["id"], buffered=False).exists()


def test_a_retried_request_is_answered_its_run_after_the_script_stops_at_the_request_key(
    client, db, key_prefix, mollifier_settings, round_trips
):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    _, secret = tenant_and_secret("rt-retry", enrol=True)
    request_key = str(uuid.uuid4())
    first = post(client, secret, idempotency_key="k-retry", request_key=request_key).json()
    retry = post(client, secret, idempotency_key="k-retry", request_key=request_key).json()
    assert retry == {"id": first["id"], "isCached": False}


def test_redis_unreachable_fails_open_to_a_direct_write(client, db, key_prefix, mollifier_settings, settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    _, secret = tenant_and_secret("rt-redis-down", enrol=True)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    before = metrics.FAIL_OPEN._value.get()
    response = post(client, secret, idempotency_key="k-down")  # no request key: fails open at once
    assert response.status_code == 200, response.content
    assert TaskRun.objects.filter(id=response.json()["id"], buffered=False).exists()
    assert metrics.FAIL_OPEN._value.get() == before + 1


def test_a_keyed_trigger_fails_open_once_the_fence_has_lapsed_and_its_key_is_recorded_in_postgres(
    client, db, key_prefix, mollifier_settings, settings
):
    """docs/api.md#request-idempotency: while the fence may still stand (the first REQUEST_KEY_FENCE_MS of the
    outage, as this process sees it) a keyed trigger is answered 503; after that it is written with its key, and
    a retry during the outage gets the same run."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, REQUEST_KEY_FENCE_MS=300)
    _, secret = tenant_and_secret("rt-redis-down-keyed", enrol=True)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    key = str(uuid.uuid4())
    early = post(client, secret, request_key=key)
    assert early.status_code == 503 and early["x-should-retry"] == "true", early.content
    assert "x-trigger-request-idempotency-key" in early.json()["error"]
    assert not TaskRun.objects.exists() and not RequestKey.objects.exists()
    time.sleep(0.4)  # > REQUEST_KEY_FENCE_MS: the fence has expired, whoever refreshed it last
    first = post(client, secret, request_key=key)
    assert first.status_code == 200, first.content
    run_id = first.json()["id"]
    assert TaskRun.objects.filter(id=run_id, buffered=False).exists()
    assert RequestKey.objects.get(key=key).run_id == run_id
    retry = post(client, secret, request_key=key)
    assert retry.status_code == 200 and retry.json()["id"] == run_id
    assert TaskRun.objects.count() == 1


def test_a_closed_intake_answers_429_with_its_reset_and_binds_no_key(client, db, key_prefix, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    tenant, secret = tenant_and_secret("rt-closed", enrol=True)
    buffer = Buffer.from_settings()
    buffer.close_intake(org_id=tenant.org.id, env_id=tenant.env.id)
    response = post(client, secret, idempotency_key="k-closed", request_key=str(uuid.uuid4()))
    assert response.status_code == 429
    assert int(response["x-ratelimit-reset"]) > 0 and "closed" in response.json()["error"]
    assert [k for k in buffer._client.scan_iter(match=f"{key_prefix}:*") if ":idem:" in k or ":req:" in k] == []
    buffer.open_intake(org_id=tenant.org.id, env_id=tenant.env.id)
    assert post(client, secret, idempotency_key="k-closed").status_code == 200  # the key was left free


def test_an_integer_beyond_64_bits_in_metadata_keeps_every_digit_in_the_snapshot(
    client, db, key_prefix, mollifier_settings
):
    """orjson alone would read it as a float (runs.fast_json): the buffered snapshot must hold the exact number."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    tenant, secret = tenant_and_secret("rt-big-int", enrol=True)
    body = '{"payload": "{}", "options": {"metadata": {"n": 123456789012345678901234567890}}}'
    response = client.post(TRIGGER, data=body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200, response.content
    entry = Buffer.from_settings().get(response.json()["id"], org_id=tenant.org.id)
    assert entry is not None and json.loads(entry.snapshot)["metadata"] == {"n": 123456789012345678901234567890}


def test_the_first_keyed_trigger_of_a_shard_without_a_fence_restores_request_keys_then_one_round_trip_again(
    client, db, key_prefix, mollifier_settings, round_trips, django_assert_num_queries
):
    """The fence's cost (docs/api.md#request-idempotency): once per shard after it lapsed (an outage, or no keyed
    trigger for REQUEST_KEY_FENCE_MS), the trigger script says UNFENCED, Postgres is asked for keys to restore
    (three queries: expired rows, the rows not restored yet, this request's own key), one pipeline restores
    them and raises the fence, and
    the script runs again; the next keyed trigger is back to one round trip and no query."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    _, secret = tenant_and_secret("rt-fence", enrol=True)
    auth.clear_cache()
    assert post(client, secret).status_code == 200  # warms the key cache and the scripts; no request key: no fence
    round_trips.clear()
    with django_assert_num_queries(3):
        response = post(client, secret, request_key=str(uuid.uuid4()))
    assert response.status_code == 200, response.content
    assert len(round_trips) == 3
    round_trips.clear()
    with django_assert_num_queries(0):
        assert post(client, secret, request_key=str(uuid.uuid4())).status_code == 200
    assert len(round_trips) == 1


def test_a_request_key_longer_than_postgres_records_is_a_400_naming_the_header(
    client, db, key_prefix, mollifier_settings, round_trips
):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    _, secret = tenant_and_secret("rt-long-key", enrol=True)
    round_trips.clear()
    response = post(client, secret, request_key="k" * 257)
    assert response.status_code == 400
    assert response.json()["error"] == "x-trigger-request-idempotency-key: at most 256 characters"
    assert round_trips == []  # refused before Redis
    assert post(client, secret, request_key="k" * 256).status_code == 200
