"""The trigger path's order and guarantees (docs/architecture.md#trigger-path), through the HTTP API and real Redis/Postgres."""

from __future__ import annotations

import json
import threading
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from buffer.buffer import Buffer
from runs import auth
from runs.ids import new_run_id
from runs.models import TaskRun
from runs.tenants import ensure_tenant, issue_api_key

TRIGGER = "/api/v1/tasks/hello/trigger"


@pytest.fixture
def tenant(db):
    tenant = ensure_tenant("trigger-org", "dev", enrol=True)
    return tenant, issue_api_key(tenant.env)[1]


@pytest.fixture
def buffer(key_prefix):
    return Buffer.from_settings()


def post(client, secret, body, **headers):
    return client.post(
        TRIGGER, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}",
        **headers,
    )  # fmt: skip


def rate_count(buffer, env) -> int:
    """How many triggers the gate has counted for ``env`` (0 when it never evaluated one)."""
    return int(buffer._client.hget(buffer.keys_for_org(env.org_id).rate(env.id), "count") or 0)


def test_buffered_trigger_answers_with_an_id_and_parks_the_snapshot(client, tenant, buffer, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, KEY_PREFIX=buffer.prefix)
    (t, secret) = tenant
    response = post(client, secret, {"payload": '{"json":{"a":1}}', "options": {"tags": ["a"]}})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["isCached"] is False and body["id"].startswith("run_")
    entry = buffer.get(body["id"], org_id=t.org.id)
    assert entry is not None and entry.env_id == t.env.id and entry.status == "QUEUED"
    assert not TaskRun.objects.filter(id=body["id"]).exists()


def test_validation_errors_never_reach_the_gate(client, tenant, buffer, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, KEY_PREFIX=buffer.prefix)
    (t, secret) = tenant
    assert post(client, secret, {"options": {"delay": "soonish"}}).status_code == 400
    assert post(client, secret, {"options": {"tags": [str(i) for i in range(11)]}}).status_code == 422
    assert rate_count(buffer, t.env) == 0
    assert post(client, secret, {"payload": "{}"}).status_code == 200
    assert rate_count(buffer, t.env) == 1  # the probe can see a counted trigger


def test_idempotency_hit_never_reaches_the_gate(client, tenant, buffer, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, KEY_PREFIX=buffer.prefix)
    (t, secret) = tenant
    first = post(client, secret, {"options": {"idempotencyKey": "k-1"}}).json()
    counted = rate_count(buffer, t.env)
    second = post(client, secret, {"options": {"idempotencyKey": "k-1"}}).json()
    assert second == {"id": first["id"], "isCached": True}
    assert rate_count(buffer, t.env) == counted


def test_request_idempotency_header_returns_the_same_run_on_retry(client, tenant, buffer, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, KEY_PREFIX=buffer.prefix)
    (_, secret) = tenant
    header = {"HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY": str(uuid.uuid4())}
    first = post(client, secret, {"payload": "{}"}, **header).json()
    retry = post(client, secret, {"payload": "{}"}, **header).json()
    other = post(client, secret, {"payload": "{}"}).json()
    assert retry["id"] == first["id"]
    assert other["id"] != first["id"]


def test_direct_trigger_writes_the_row_when_the_gate_passes(client, tenant, buffer, mollifier_settings):
    mollifier_settings(ENABLED=False, KEY_PREFIX=buffer.prefix)
    (t, secret) = tenant
    run_id = post(client, secret, {"payload": "{}", "options": {"delay": "1h"}}).json()["id"]
    run = TaskRun.objects.get(id=run_id)
    assert (run.status, run.buffered, run.env_id) == ("DELAYED", False, t.env.id)
    assert buffer.get(run_id, org_id=t.org.id) is None


def test_warm_buffered_trigger_makes_zero_postgres_queries(client, tenant, buffer, mollifier_settings, statements):
    """Statements counted at psycopg's cursor: the keyed lookup is a prepared statement Django's counter misses."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, KEY_PREFIX=buffer.prefix)
    (_, secret) = tenant
    auth.clear_cache()
    assert post(client, secret, {"payload": "{}"}).status_code == 200  # warms the key cache
    statements.clear()
    response = post(client, secret, {"payload": "{}", "options": {"tags": ["x"]}})
    assert response.status_code == 200
    assert statements == []
    # A new idempotency key: one lookup on the unique index (a row may hold it with its claim cut).
    response = post(client, secret, {"payload": "{}", "options": {"idempotencyKey": "fresh", "tags": ["x"]}})
    assert response.status_code == 200
    assert len(statements) == 1, statements


def test_full_buffer_answers_429_with_reset_header_and_writes_nothing(client, tenant, buffer, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, MAX_BUFFERED_PER_ENV=2, KEY_PREFIX=buffer.prefix)
    (t, secret) = tenant
    assert [post(client, secret, {}).status_code for _ in range(2)] == [200, 200]
    response = post(client, secret, {})
    assert response.status_code == 429
    assert "x-ratelimit-reset" in response.headers and int(response.headers["x-ratelimit-reset"]) > 0
    assert "error" in response.json()
    assert buffer.depth(buffer.shard_for(t.org.id), t.env.id) == 2


@pytest.mark.django_db(transaction=True)
def test_postgres_unreachable_still_answers_200_for_an_enrolled_org_and_buffers(client, key_prefix, mollifier_settings):
    """Gate passes (threshold high) but Postgres is down: the trigger is diverted into the buffer."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=1_000_000)
    tenant = ensure_tenant("outage-org", "dev", enrol=True)
    secret = issue_api_key(tenant.env)[1]
    auth.clear_cache()
    assert post(client, secret, {}).status_code == 200  # warm: the key is cached in process
    saved = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"  # nothing listens there: every connect is refused
    try:
        response = post(client, secret, {"payload": "{}"})
    finally:
        connection.close()
        connection.settings_dict["PORT"] = saved
    assert response.status_code == 200, response.content
    run_id = response.json()["id"]
    entry = Buffer.from_settings().get(run_id, org_id=tenant.org.id)
    assert entry is not None and entry.status == "QUEUED"
    assert not TaskRun.objects.filter(id=run_id).exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("enrolled", [True, False], ids=["buffered", "direct"])
def test_a_thousand_concurrent_same_key_triggers_make_exactly_one_run(key_prefix, enrolled):
    """Real concurrency: 1,000 requests from 32 threads against gunicorn with 2 worker processes."""
    from tests.live import Gunicorn

    tenant = ensure_tenant(f"race-{enrolled}", "dev", enrol=enrolled)
    secret = issue_api_key(tenant.env)[1]
    server = Gunicorn(
        {"MOLLIFIER_ENABLED": "true", "MOLLIFIER_TRIP_THRESHOLD": "0", "MOLLIFIER_KEY_PREFIX": key_prefix}
    )
    body = json.dumps({"payload": "{}", "options": {"idempotencyKey": "the-one"}}).encode()
    barrier = threading.Barrier(32)

    def fire(i: int) -> dict:
        if i < 32:
            barrier.wait()
        request = urllib.request.Request(
            f"{server.url}{TRIGGER}", data=body, method="POST",
            headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(fire, range(1000)))
    finally:
        server.stop()
    ids = {a["id"] for a in answers}
    assert len(ids) == 1
    assert sum(not a["isCached"] for a in answers) == 1
    run_id = ids.pop()
    if enrolled:
        assert Buffer.from_settings().get(run_id, org_id=tenant.org.id) is not None
        assert not TaskRun.objects.exists()
    else:
        assert list(TaskRun.objects.values_list("id", flat=True)) == [run_id]


def test_a_key_claimed_by_a_trigger_still_in_flight_is_not_taken_over(client, tenant, buffer, mollifier_settings):
    """The claim's run exists nowhere yet because its trigger has not written it: answer 409 (retry)."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    (t, secret) = tenant
    in_flight = new_run_id()  # minted just now, written nowhere
    assert buffer.claim("idem", org_id=t.org.id, env_id=t.env.id, task="hello", key="k-busy", run_id=in_flight,
                        ttl_ms=60_000) is None  # fmt: skip
    response = post(client, secret, {"options": {"idempotencyKey": "k-busy"}})
    assert response.status_code == 409
    assert response.headers["x-should-retry"] == "true"
    assert not list(buffer._client.scan_iter(match=f"{buffer.prefix}:*:e:*"))


def test_a_claim_left_by_a_trigger_that_died_long_ago_is_taken_over(client, tenant, buffer, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    (t, secret) = tenant
    dead = new_run_id(now_ms=1_600_000_000_000)  # minted years ago, written nowhere
    buffer.claim("idem", org_id=t.org.id, env_id=t.env.id, task="hello", key="k-old", run_id=dead, ttl_ms=60_000)
    response = post(client, secret, {"options": {"idempotencyKey": "k-old"}})
    assert response.status_code == 200
    assert response.json()["id"] != dead
    assert response.json()["isCached"] is False


@pytest.mark.parametrize(
    ("options", "field"),
    [({"concurrencyKey": "c" * 300}, "options.concurrencyKey"), ({"priority": 10**12}, "options.priority")],
)
def test_buffered_trigger_refuses_what_the_row_could_not_hold(
    client, tenant, buffer, mollifier_settings, options, field
):
    """Validation happens before the gate: a buffered trigger is never answered 200 and failed later."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    (_, secret) = tenant
    response = post(client, secret, {"payload": "{}", "options": options})
    assert response.status_code in (400, 422)
    assert field in response.json()["error"]
    assert not list(buffer._client.scan_iter(match=f"{buffer.prefix}:*:e:*"))


def test_nul_in_payload_is_refused_before_buffering(client, tenant, buffer, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    (_, secret) = tenant
    response = post(client, secret, {"payload": "a\u0000b"})
    assert response.status_code == 422
    assert "payload" in response.json()["error"]


def test_dead_lettered_run_reads_as_system_failure_not_queued_forever(client, tenant, buffer, mollifier_settings):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    (t, secret) = tenant
    run_id = post(client, secret, {"payload": "{}"}).json()["id"]
    shard = buffer.shard_for(t.org.id)
    buffer.lease(shard, org_id=t.org.id, env_id=t.env.id, n=1, now_ms=1, lease_ms=1000)
    buffer.dead_letter(shard, run_id, now_ms=2, reason="env gone")
    run = client.get(f"/api/v3/runs/{run_id}", HTTP_AUTHORIZATION=f"Bearer {secret}").json()
    assert (run["status"], run["isCompleted"], run["isFailed"]) == ("SYSTEM_FAILURE", True, True)
    assert run["error"]["message"] == "env gone"


@pytest.mark.django_db(transaction=True)
def test_postgres_down_a_retried_keyed_trigger_gets_its_buffered_run_back(client, key_prefix, mollifier_settings):
    """The holder of the key sits in the buffer and Postgres is down: a same-key trigger answers it as cached,
    and a retry of the same request answers the same run — not a 503 after which the client triggers again."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)  # every trigger of the enrolled org is buffered
    tenant = ensure_tenant("keyed-outage", "dev", enrol=True)
    secret = issue_api_key(tenant.env)[1]
    auth.clear_cache()
    body = {"payload": "{}", "options": {"idempotencyKey": "order-42"}}
    first = post(client, secret, body, HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY="req-1")
    assert first.status_code == 200 and first.json()["isCached"] is False
    run_id = first.json()["id"]

    saved = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"  # nothing listens there: Postgres is "down"
    try:
        same_key = post(client, secret, body, HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY="req-2")
        retried = post(client, secret, body, HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY="req-1")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = saved

    assert same_key.status_code == 200, same_key.content
    assert same_key.json() == {"id": run_id, "isCached": True}
    assert retried.status_code == 200, retried.content
    assert retried.json()["id"] == run_id
    assert Buffer.from_settings().depth(Buffer.from_settings().shard_for(tenant.org.id), tenant.env.id) == 1


@pytest.mark.django_db(transaction=True)
def test_a_direct_commit_whose_reply_is_lost_is_not_made_twice_by_the_retry(client, key_prefix, monkeypatch):
    """The row commits, then the connection breaks before the answer: 503. The SDK retries with the same
    request key; it must get the committed run back, not a second run."""
    from django.db import OperationalError

    from runs import engine

    real = engine.trigger
    calls = []

    def commit_then_lose_the_reply(snapshot, **kwargs):
        result = real(snapshot, **kwargs)
        calls.append(snapshot.id)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return result

    monkeypatch.setattr(engine, "trigger", commit_then_lose_the_reply)
    tenant = ensure_tenant("lost-reply-org", "dev", enrol=False)  # not enrolled: no diversion, a 503
    secret = issue_api_key(tenant.env)[1]
    auth.clear_cache()
    first = post(client, secret, {"payload": "{}"}, HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY="lost-reply")
    retried = post(client, secret, {"payload": "{}"}, HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY="lost-reply")

    assert first.status_code == 503 and first.headers["x-should-retry"] == "true"
    assert retried.status_code == 200, retried.content
    assert retried.json()["id"] == calls[0]
    assert TaskRun.objects.filter(env=tenant.env).count() == 1
