"""How long a task-level idempotency claim costs the buffer's Redis (docs/architecture.md#idempotency): only
while it protects something Redis alone knows. Through the HTTP trigger entry point and the drain's tasks (run
inline), with real Redis and Postgres.

* a trigger that can never be buffered (not enrolled, gate off, bypass) writes no claim: its row's unique
  index keeps the key to one run;
* a passed-through trigger of an env that could be buffered claims its key for its direct write only (at
  most ``runs.trigger.DIRECT_CLAIM_MS`` if its process dies mid-write, ``tests/buffer/test_trigger_script.py``);
* a buffered run's claim lives while it is buffered and is cut to the ack grace when its row is committed;
* with the claim gone, the row still answers: ``isCached`` and the holder's id, never a second run.
"""

from __future__ import annotations

import json

import pytest
from django.db import connection

from buffer.buffer import Buffer
from drainer import tasks
from runs import auth, engine, trigger
from runs.models import RunStatus, TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.redis_servers import redis_server

TRIGGER = "/api/v1/tasks/hello/trigger"
DAY_MS = 24 * 3600 * 1000


def post(client, secret: str, key: str, *, ttl: str = "30d"):
    body = {"payload": '{"json":{"a":1}}', "options": {"idempotencyKey": key, "idempotencyKeyTTL": ttl}}
    response = client.post(
        TRIGGER, data=json.dumps(body), content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == 200, response.content
    return response.json()


@pytest.fixture
def env_of(transactional_db, key_prefix, mollifier_settings):
    """``env_of(slug, enrol=…)`` → (tenant, secret), with the gate on and mollifying every enrolled trigger.
    Transactional: the drain task closes its database connection when it ends."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, DRAINER_ENABLED=True)

    def make(slug: str, *, enrol: bool):
        tenant = ensure_tenant(slug, "prod", enrol=enrol)
        auth.clear_cache()
        return tenant, issue_api_key(tenant.env)[1]

    return make


def claim_ttl_ms(tenant, key: str) -> int:
    """The claim's PTTL: -2 when there is none."""
    buffer = Buffer.from_settings()
    return buffer._client.pttl(buffer.keys_for_org(tenant.org.id).idem(tenant.env.id, "hello", key))


def drain(tenant) -> None:
    for _ in range(20):
        tasks.fan_out()
        if not Buffer.from_settings().depth(Buffer.from_settings().shard_for(tenant.org.id), tenant.env.id):
            return


def test_a_keyed_trigger_that_can_never_be_buffered_writes_no_claim_and_its_row_answers_a_repeat(client, env_of):
    tenant, secret = env_of("cl-direct", enrol=False)

    first = post(client, secret, "k-direct")

    assert claim_ttl_ms(tenant, "k-direct") == -2  # before: ~30 days (2,592,000,000 ms)
    assert post(client, secret, "k-direct") == {"id": first["id"], "isCached": True}
    assert TaskRun.objects.filter(env_id=tenant.env.id).count() == 1


def test_a_direct_write_of_an_env_that_could_be_buffered_claims_its_key_for_its_write_only(
    client, env_of, mollifier_settings
):
    tenant, secret = env_of("cl-pass", enrol=True)
    mollifier_settings(TRIP_THRESHOLD=1_000)  # the gate passes it through

    first = post(client, secret, "k-pass")

    assert TaskRun.objects.filter(id=first["id"], buffered=False).exists()
    # cut to a short grace once the row committed (runs.trigger.COMMITTED_CLAIM_GRACE_MS: a lookup made just
    # before the commit still finds it); before: ~30 days
    assert 0 < claim_ttl_ms(tenant, "k-pass") <= trigger.COMMITTED_CLAIM_GRACE_MS
    assert post(client, secret, "k-pass") == {"id": first["id"], "isCached": True}


def test_a_buffered_runs_claim_lives_while_it_is_buffered_and_is_cut_to_the_ack_grace_when_drained(
    client, env_of, celery_eager, settings
):
    tenant, secret = env_of("cl-buffered", enrol=True)

    first = post(client, secret, "k-buf")

    assert not TaskRun.objects.filter(id=first["id"]).exists()
    assert claim_ttl_ms(tenant, "k-buf") > 29 * DAY_MS  # the whole key TTL while only Redis knows the run
    drain(tenant)
    assert TaskRun.objects.filter(id=first["id"], buffered=True).exists()
    grace_ms = settings.MOLLIFIER.ACK_GRACE_S * 1000
    assert 0 < claim_ttl_ms(tenant, "k-buf") <= grace_ms  # before: ~30 days


def test_a_drained_runs_key_answers_cached_after_its_claim_is_gone_even_when_the_gate_mollifies(
    client, env_of, celery_eager
):
    tenant, secret = env_of("cl-gone", enrol=True)
    first = post(client, secret, "k-gone")
    drain(tenant)
    buffer = Buffer.from_settings()
    buffer.reset_claim("idem", org_id=tenant.org.id, env_id=tenant.env.id, task="hello", key="k-gone")  # lapsed

    again = post(client, secret, "k-gone")

    assert again == {"id": first["id"], "isCached": True}  # before: a second, buffered run, isCached false
    assert buffer.depth(buffer.shard_for(tenant.org.id), tenant.env.id) == 0


def test_a_directly_written_runs_key_answers_cached_when_a_later_trigger_is_mollified(
    client, env_of, mollifier_settings
):
    tenant, secret = env_of("cl-later", enrol=True)
    mollifier_settings(TRIP_THRESHOLD=1_000)
    first = post(client, secret, "k-later")
    Buffer.from_settings().reset_claim(
        "idem", org_id=tenant.org.id, env_id=tenant.env.id, task="hello", key="k-later"
    )  # its minute is over
    mollifier_settings(TRIP_THRESHOLD=0)  # a storm: every trigger is mollified now

    assert post(client, secret, "k-later") == {"id": first["id"], "isCached": True}


def test_a_failed_holders_key_is_reused_by_a_new_buffered_run_after_its_claim_is_gone(client, env_of, celery_eager):
    tenant, secret = env_of("cl-reuse", enrol=True)
    first = post(client, secret, "k-reuse")
    drain(tenant)
    TaskRun.objects.filter(id=first["id"]).update(status=RunStatus.SYSTEM_FAILURE)
    Buffer.from_settings().reset_claim("idem", org_id=tenant.org.id, env_id=tenant.env.id, task="hello", key="k-reuse")

    again = post(client, secret, "k-reuse")

    assert again["id"] != first["id"] and again["isCached"] is False
    assert claim_ttl_ms(tenant, "k-reuse") > 29 * DAY_MS  # buffered: the new run holds the key
    assert TaskRun.objects.get(id=first["id"]).idempotency_key is None  # given up by the failed run


def test_redis_lost_between_the_key_lookup_and_the_accept_fails_open_to_a_direct_write(
    client, transactional_db, settings, mollifier_settings, tmp_path, monkeypatch
):
    """The worst moment for the two-step keyed accept: Redis dies after the script stopped for the lookup."""
    with redis_server(tmp_path / "r") as server:
        settings.REDIS_URL = server.url
        settings.BUFFER_REDIS_URL = ""
        mollifier_settings(KEY_PREFIX="lost", ENABLED=True, TRIP_THRESHOLD=0)
        tenant = ensure_tenant("cl-lost", "prod", enrol=True)
        auth.clear_cache()
        secret = issue_api_key(tenant.env)[1]
        lookup = engine.idempotency_holder

        def lookup_then_lose_redis(*args, **kwargs):
            server.kill()
            return lookup(*args, **kwargs)

        monkeypatch.setattr(engine, "idempotency_holder", lookup_then_lose_redis)
        answer = post(client, secret, "k-lost")

    assert answer["isCached"] is False
    assert TaskRun.objects.filter(id=answer["id"], buffered=False, idempotency_key="k-lost").exists()


def test_postgres_unreachable_during_the_key_lookup_still_buffers_the_keyed_trigger(client, env_of):
    """An outage must not fail triggers: the lookup cannot answer, so the run is accepted (and claims the key)."""
    tenant, secret = env_of("cl-pg-down", enrol=True)
    post(client, secret, "k-warm")  # the API key is cached in process
    saved = connection.settings_dict["PORT"]
    connection.close()
    connection.settings_dict["PORT"] = "1"  # nothing listens there: every connect is refused
    try:
        answer = post(client, secret, "k-pg-down")
    finally:
        connection.close()
        connection.settings_dict["PORT"] = saved

    assert answer["isCached"] is False
    entry = Buffer.from_settings().get(answer["id"], org_id=tenant.org.id)
    assert entry is not None and entry.status == "QUEUED"
    assert claim_ttl_ms(tenant, "k-pg-down") > 29 * DAY_MS
