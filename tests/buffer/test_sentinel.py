"""The buffer behind Redis Sentinel (``BUFFER_REDIS_URL=redis+sentinel://…``, docs/operations.md#redis-sentinel),
against real servers of the test's own: a primary, a replica and one sentinel (quorum 1).

The storm through a failover is tests/chaos/test_sentinel_failover.py; here, one step at a time: the client
follows the primary the sentinels name, reloads its scripts there, and counts "no primary" — a dead one, none
named, a demoted one answering READONLY — as the buffer being unavailable (503, fail open), never as a bug.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection

from buffer.breaker import Breaker, guarded_connection_class
from buffer.buffer import Buffer, BufferUnavailable
from buffer.checks import check_redis_eviction_policy, check_redis_persistence
from buffer.client import CLIENT_OPTIONS
from buffer.values import AcceptStatus
from runs import auth
from runs.tenants import ensure_tenant, issue_api_key
from tests.redis_servers import sentinel_managed

pytestmark = pytest.mark.slow


def _accept(buffer: Buffer, run_id: str) -> AcceptStatus:
    return buffer.accept(
        run_id=run_id, env_id=1, org_id=1, snapshot="{}", now_ms=1_000, idempotency=None, max_per_env=100
    ).status


def _sentinel_url(sentinel) -> str:
    return f"redis+sentinel://127.0.0.1:{sentinel.port}/{sentinel.service}"


def test_the_buffer_follows_the_primary_through_a_failover_and_loads_its_scripts_there(
    tmp_path, settings, mollifier_settings, key_prefix
):
    with sentinel_managed(tmp_path, down_ms=500) as (primary, replica, sentinel):
        settings.BUFFER_REDIS_URL = _sentinel_url(sentinel)
        buffer = Buffer.from_settings()  # the worker profile: the drain's and the sweep's client
        assert _accept(buffer, "run_a") is AcceptStatus.ACCEPTED
        assert redis.Redis(port=primary.port).exists(buffer.keys_for_org(1).entry("run_a"))

        primary.kill()  # a crash: the sentinel marks it down after down-after-milliseconds and promotes the replica
        deadline = time.monotonic() + 15
        while sentinel.primary_port() != replica.port:
            assert time.monotonic() < deadline, "the sentinel never promoted the replica"
            time.sleep(0.05)
        promoted = redis.Redis(port=replica.port)
        sha = buffer._scripts.accept.sha
        assert promoted.script_exists(sha) == [False]  # Redis replicates no script cache: NOSCRIPT ahead

        errors: list[Exception] = []
        while True:  # the first call may meet a connection the failover closed: "no primary", then the new one
            try:
                status = _accept(buffer, "run_b")
                break
            except BufferUnavailable as exc:
                errors.append(exc)
                assert len(errors) < 20, errors
                time.sleep(0.05)
        assert all(isinstance(exc, redis.ConnectionError) for exc in errors), f"not a 'no primary' error: {errors}"

        assert status is AcceptStatus.ACCEPTED
        assert promoted.script_exists(sha) == [True]
        assert promoted.exists(buffer.keys_for_org(1).entry("run_b"))
        entries = buffer.get_many(["run_a", "run_b"], org_id=1)  # a pipeline of script calls on the new primary
        assert [e.run_id if e else None for e in entries] == ["run_a", "run_b"]
        # The system checks ask the primary the sentinels name.
        assert check_redis_eviction_policy() == []
        assert {m.id for m in check_redis_persistence()} == {"mollifier.W005"}


@pytest.mark.django_db(transaction=True)
def test_the_web_answers_503_with_should_retry_while_there_is_no_primary(
    tmp_path, client, settings, mollifier_settings, key_prefix
):
    with sentinel_managed(tmp_path, down_ms=60_000) as (primary, _replica, sentinel):  # no failover in this test
        settings.BUFFER_REDIS_URL = _sentinel_url(sentinel)
        # A keyed trigger answers 503 until Redis has failed for REQUEST_KEY_FENCE_MS, then fails open to
        # Postgres (docs/api.md#request-idempotency): a long fence keeps this test on the 503 side.
        mollifier_settings(ENABLED=True, TRIP_THRESHOLD=0, REDIS_BREAKER_OPEN_MS=200, REQUEST_KEY_FENCE_MS=60_000)
        tenant = ensure_tenant("sentinel", "dev", enrol=True)
        secret = issue_api_key(tenant.env)[1]
        auth.clear_cache()

        def trigger(key: str):
            return client.post(
                "/api/v1/tasks/hello/trigger", data=json.dumps({"payload": "{}"}), content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_X_TRIGGER_REQUEST_IDEMPOTENCY_KEY=key,
            )  # fmt: skip

        answered = trigger("before")
        assert answered.status_code == 200, answered.content

        primary.kill()  # the sentinels still name it: every connection is refused
        refused = trigger("during")
        assert refused.status_code == 503 and refused.headers["x-should-retry"] == "true", refused.content
        read = client.get(f"/api/v3/runs/{answered.json()['id']}", HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert read.status_code == 503 and read.headers["x-should-retry"] == "true", read.content

        sentinel.stop()  # and now no sentinel answers at all: the same answer, not a 500
        time.sleep(0.3)  # past the breaker's open time, so the next call asks the sentinels
        refused = trigger("during-2")
        assert refused.status_code == 503 and refused.headers["x-should-retry"] == "true", refused.content
        read = client.get(f"/api/v3/runs/{answered.json()['id']}", HTTP_AUTHORIZATION=f"Bearer {secret}")
        assert read.status_code == 503 and read.headers["x-should-retry"] == "true", read.content


def test_a_demoted_primary_answering_readonly_counts_as_no_primary(tmp_path):
    """A sentinel whose answer is stale (a partitioned one, or a demotion it has not seen yet) names a server
    that is a replica now: the write's READONLY is a failed call (the breaker counts it, the caller sees
    ``redis.ConnectionError``), and the connection is dropped so the next one asks again."""
    with sentinel_managed(tmp_path, down_ms=60_000) as (_primary, replica, sentinel):

        class StaleSentinel:  # the one call the pool makes of its sentinel manager
            def discover_master(self, service_name: str) -> tuple[str, int]:
                return "127.0.0.1", replica.port

        breaker = Breaker(failures=1, open_ms=60_000)
        pool = SentinelConnectionPool(
            sentinel.service, StaleSentinel(), connection_class=guarded_connection_class("", breaker,
            SentinelManagedConnection), **CLIENT_OPTIONS,
        )  # fmt: skip
        buffer = Buffer(redis.Redis(connection_pool=pool), prefix="ro", shards=1, breaker=breaker)

        with pytest.raises(redis.ConnectionError, match="now a slave"):
            _accept(buffer, "run_ro")

        assert breaker.state == "open"
        assert buffer.unreachable_ms() is not None
