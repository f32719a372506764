"""A durable buffer: the system check for AOF, and ``ACCEPT_DURABILITY=replica`` — an accept is answered only
once a replica has it — against real ``redis-server`` processes of the test's own (docs/operations.md)."""

from __future__ import annotations

import json
import time

import pytest
import redis

from buffer.buffer import Buffer, NotReplicated
from buffer.checks import check_accept_replicas, check_redis_persistence
from buffer.client import CLIENT_OPTIONS
from buffer.values import AcceptStatus
from runs import auth
from runs.tenants import ensure_tenant, issue_api_key
from tests.redis_servers import RedisServer, redis_server, wait_for_replica


def _ids(messages) -> set[str]:
    return {m.id for m in messages}


def test_a_redis_without_aof_warns(settings, redis_client):
    assert redis_client.config_get("appendonly") == {"appendonly": "no"}  # the shared test Redis

    assert _ids(check_redis_persistence()) == {"mollifier.W005"}


def test_a_redis_with_aof_passes_the_persistence_check(settings, tmp_path):
    with redis_server(tmp_path / "aof", "--appendonly", "yes", "--appendfsync", "always") as server:
        settings.REDIS_URL = server.url
        assert check_redis_persistence() == []


@pytest.fixture
def primary_and_replica(tmp_path):
    with redis_server(tmp_path / "primary") as primary:
        replica = RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(primary.port)).start()
        wait_for_replica(replica)
        try:
            yield primary, replica
        finally:
            replica.stop()


def test_replica_durability_warns_when_the_primary_has_no_replica(primary_and_replica, settings, mollifier_settings):
    primary, replica = primary_and_replica
    settings.REDIS_URL = primary.url
    assert check_accept_replicas() == []  # ACCEPT_DURABILITY=none needs none
    mollifier_settings(ACCEPT_DURABILITY="replica")
    assert check_accept_replicas() == []

    replica.kill()
    deadline = time.monotonic() + 10
    while redis.Redis.from_url(primary.url).info("replication")["connected_slaves"]:
        assert time.monotonic() < deadline, "the primary never noticed its replica gone"
        time.sleep(0.05)

    assert _ids(check_accept_replicas()) == {"mollifier.W006"}


def _accept(buffer: Buffer, run_id: str):
    return buffer.accept(
        run_id=run_id, env_id=1, org_id=1, snapshot="{}", now_ms=1_000, idempotency=None, max_per_env=10
    )


def test_with_a_replica_the_accept_is_on_the_replica_when_it_is_answered(primary_and_replica):
    primary, replica = primary_and_replica
    buffer = Buffer(redis.Redis.from_url(primary.url, **CLIENT_OPTIONS), prefix="dur", shards=1,
                    accept_replicas=1, accept_wait_ms=2_000)  # fmt: skip

    assert _accept(buffer, "run_a").status is AcceptStatus.ACCEPTED

    on_replica = Buffer(redis.Redis.from_url(replica.url, **CLIENT_OPTIONS), prefix="dur", shards=1)
    entry = on_replica.get("run_a", org_id=1)
    assert entry is not None and entry.status == "QUEUED"


def test_without_a_replica_the_accept_raises_after_the_wait_and_the_entry_stays_in_the_primary(primary_and_replica):
    primary, replica = primary_and_replica
    buffer = Buffer(redis.Redis.from_url(primary.url, **CLIENT_OPTIONS), prefix="dur", shards=1,
                    accept_replicas=1, accept_wait_ms=300)  # fmt: skip
    replica.kill()

    started = time.monotonic()
    with pytest.raises(NotReplicated):
        _accept(buffer, "run_b")

    assert 0.25 < time.monotonic() - started < 3
    entry = buffer.get("run_b", org_id=1)
    assert entry is not None and entry.status == "QUEUED"  # drained as usual if the primary survives


@pytest.mark.django_db(transaction=True)
def test_an_unreplicated_trigger_answers_503_until_a_replica_has_it_and_its_retry_gets_the_same_run(
    primary_and_replica, client, settings, mollifier_settings, key_prefix
):
    """The retry's answer meets the bar the first attempt's did: after a failover the promoted primary has
    no replica until one resyncs (tests/chaos/test_sentinel_failover.py), and a retry answered 200 meanwhile
    would be a run that the next failover loses."""
    primary, replica = primary_and_replica
    settings.REDIS_URL = primary.url
    mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, ACCEPT_DURABILITY="replica", ACCEPT_WAIT_MS=300)
    tenant = ensure_tenant("durable", "dev", enrol=True)
    secret = issue_api_key(tenant.env)[1]
    auth.clear_cache()

    def post():
        return client.post(
            "/api/v1/tasks/hello/trigger", data=json.dumps({"payload": "{}"}), content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY="req-durable",
        )  # fmt: skip

    replica.kill()
    refused = post()
    assert refused.status_code == 503 and refused.headers["x-should-retry"] == "true"
    assert "replica" in refused.json()["error"]

    refused_again = post()  # this request has its run in the primary, which no replica has confirmed yet
    assert refused_again.status_code == 503 and "replica" in refused_again.json()["error"]

    replica.start()  # back, and resynced from the primary
    wait_for_replica(replica)
    retried = post()
    assert retried.status_code == 200, retried.content
    buffer = Buffer.from_settings()
    assert buffer.depth(buffer.shard_for(tenant.org.id), tenant.env.id) == 1
    entry = buffer.get(retried.json()["id"], org_id=tenant.org.id)
    assert entry is not None and entry.status == "QUEUED"
    on_replica = Buffer(redis.Redis.from_url(replica.url, **CLIENT_OPTIONS), prefix=key_prefix, shards=buffer.shards)
    assert on_replica.get(retried.json()["id"], org_id=tenant.org.id) is not None
