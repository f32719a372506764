"""A keyed trigger of an env being mollified asks Postgres about its key before the script, which then accepts
in the same call; the claim of a directly written run outlives its commit by a grace, so a lookup made just
before that commit cannot let a second run take the key; and the lookup is its connection's health check
(docs/architecture.md#idempotency, #trigger-path). Real Redis, real Postgres, real backends killed."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from django.db import connection

from buffer.buffer import Buffer
from mollifier_project.clock import to_ms
from runs import auth, trigger
from runs.models import TaskRun
from runs.schemas import TriggerOptions
from runs.tenants import ensure_tenant, issue_api_key

TRIGGER = "/api/v1/tasks/hello/trigger"


def post(client, secret, key: str):
    options = {"idempotencyKey": key, "idempotencyKeyTTL": "10m"}
    return client.post(
        TRIGGER, data=json.dumps({"payload": '{"json":{"a":1}}', "options": options}),
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}",
    )  # fmt: skip


def enrolled(slug: str):
    tenant = ensure_tenant(slug, "prod", enrol=True)
    auth.clear_cache()
    return tenant, issue_api_key(tenant.env)[1]


@pytest.fixture
def health_checks(monkeypatch):
    """The ``SELECT 1`` health checks Django sends on this thread's connection while the test runs."""
    sent: list[str] = []
    original = psycopg.Cursor.execute  # Django's is_usable: a psycopg cursor's execute("SELECT 1")

    def counting(self, query, *args, **kwargs):
        if query == "SELECT 1":
            sent.append(query)
        return original(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", counting)
    return sent


def test_a_reused_connection_is_checked_by_the_lookup_itself_not_by_a_select_1_first(
    client, transactional_db, key_prefix, mollifier_settings, health_checks
):
    """Before: every request's first query on a reused connection sent ``SELECT 1`` first (one round trip)."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    _, secret = enrolled("lf-health")
    assert post(client, secret, uuid.uuid4().hex).status_code == 200  # connects, warms the hint
    connection.health_check_done = False  # what Django's request_started does to a reused connection
    response = post(client, secret, uuid.uuid4().hex)
    assert response.status_code == 200, response.content
    assert health_checks == []
    assert connection.health_check_done


def test_a_connection_whose_backend_died_between_requests_is_replaced_and_the_lookup_still_answers(
    client, transactional_db, key_prefix, mollifier_settings, redis_client
):
    """The health check's job, done by the lookup: the key is held by a row, the web's backend is terminated,
    and the next keyed trigger still finds the row (a failed lookup would have accepted a second run)."""
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=1000)
    tenant, secret = enrolled("lf-killed")
    first = post(client, secret, "k-held")  # under the threshold: written directly
    assert first.status_code == 200 and TaskRun.objects.filter(id=first.json()["id"]).exists()
    claim = Buffer.from_settings().keys_for_org(tenant.org.id).claim("idem", tenant.env.id, "hello", "k-held")
    assert redis_client.delete(claim) == 1  # its grace is over: only the row holds the key now
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    assert post(client, secret, uuid.uuid4().hex).status_code == 200  # buffered: the env is being mollified
    pid = connection.connection.info.backend_pid
    with psycopg.connect(_dsn(), autocommit=True) as other:
        assert other.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
    connection.health_check_done = False
    again = post(client, secret, "k-held")
    assert again.status_code == 200, again.content
    assert again.json() == {"id": first.json()["id"], "isCached": True}
    assert TaskRun.objects.filter(idempotency_key="k-held").count() == 1
    assert connection.connection.info.backend_pid != pid


def _dsn() -> str:
    params = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        host=params["HOST"], port=params["PORT"] or 5432, user=params["USER"], password=params["PASSWORD"] or None,
        dbname=params["NAME"],
    )  # fmt: skip


def test_a_direct_writes_claim_outlives_its_commit_so_a_lookup_made_before_it_cannot_take_the_key(
    client, transactional_db, key_prefix, mollifier_settings, monkeypatch, redis_client
):
    """The race the lookup-first order opens, closed: a buffered trigger finds the key free in Postgres; before
    its script runs, another trigger of the same key is passed through by the gate, writes its row and releases
    its claim. The script must still see that claim (cut to ``COMMITTED_CLAIM_GRACE_MS``, not deleted) and answer
    with that row. Before the grace, the claim was deleted at commit and the key got a second, buffered run."""
    cfg = mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0)
    tenant, secret = enrolled("lf-race")
    assert post(client, secret, uuid.uuid4().hex).status_code == 200  # the env is being mollified
    env = auth.authenticate(f"Bearer {secret}")
    assert env is not None
    lookup = trigger._key_free_in_postgres
    direct: list[str] = []

    def lookup_then_a_direct_write_commits(env_ctx, s):
        free = lookup(env_ctx, s)
        if direct:  # the other trigger's own lookup (the env is being mollified): nothing more
            return free
        assert free
        direct.append("")
        # This other trigger's gate passes it through: its hold is over and its threshold not reached.
        passing = cfg.model_copy(update={"TRIP_THRESHOLD": 10**6})
        redis_client.delete(Buffer.from_settings().keys_for_org(env_ctx.org_id).tripped(env_ctx.env_id))
        now = s.created_at
        other = trigger.prepare(
            env_ctx, s.task_identifier, TriggerOptions.model_validate({"idempotencyKey": s.idempotency_key}), None,
            now_ms=to_ms(now), max_payload_bytes=cfg.MAX_PAYLOAD_BYTES, max_metadata_bytes=cfg.MAX_METADATA_BYTES,
        )  # fmt: skip
        result = trigger.trigger(env_ctx, other, buffer=Buffer.from_settings(), cfg=passing, now_ms=to_ms(now))
        assert result.path == "direct"
        direct[0] = result.run_id
        return free

    monkeypatch.setattr(trigger, "_key_free_in_postgres", lookup_then_a_direct_write_commits)
    response = post(client, secret, "k-race")
    assert response.status_code == 200, response.content
    assert direct, "the lookup-first path was not taken"
    assert response.json() == {"id": direct[0], "isCached": True}
    assert TaskRun.objects.filter(idempotency_key="k-race").count() == 1
    assert Buffer.from_settings().get(direct[0], org_id=tenant.org.id) is None  # no buffered twin either


def test_the_claim_of_a_directly_written_run_is_cut_to_the_grace_not_deleted(
    client, db, key_prefix, mollifier_settings, redis_client
):
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=1000)
    tenant, secret = enrolled("lf-grace")
    response = post(client, secret, "k-grace")
    assert response.status_code == 200 and TaskRun.objects.filter(id=response.json()["id"]).exists()
    name = Buffer.from_settings().keys_for_org(tenant.org.id).claim("idem", tenant.env.id, "hello", "k-grace")
    assert redis_client.get(name) == response.json()["id"].encode()
    assert 0 < redis_client.pttl(name) <= trigger.COMMITTED_CLAIM_GRACE_MS
