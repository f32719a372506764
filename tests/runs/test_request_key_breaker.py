"""A web process whose circuit breaker is open has not seen Redis fail: it has stopped asking
(docs/api.md#request-idempotency-during-a-redis-outage).

A keyed trigger may fail open (its request key recorded in Postgres only) once Redis has failed this process
for ``REQUEST_KEY_FENCE_MS``: nobody can have refreshed the shard's fence meanwhile, so a retry arriving
anywhere later finds the fence gone and restores the key first. That holds only if this process' calls really
failed over that span. While the breaker is open no call is made: a Redis that stalled for a moment (two
timed-out calls open the breaker) and answered again at once is still "failing" for this process until the
breaker's probe, while every other process triggers through it and keeps the fence up.

Two gunicorns share one private redis-server: A sees a 0.7 s SIGSTOP (two unkeyed triggers time out, its
breaker opens for 5 s); B triggers through Redis before and after it, refreshing the fence. A keyed trigger
sent to A once ``REQUEST_KEY_FENCE_MS`` has passed since A's first failure, then its retry (the answer was lost)
sent to B, must name one run. Before the fix A wrote it directly without asking Redis and B, whose fence was
alive, accepted the retry as a new run: two runs for one request key.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid

import pytest
import redis

from runs.models import TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.live import Gunicorn
from tests.redis_servers import RedisServer
from tests.runs.test_request_key_outage import TRIGGER, every_run, send

FENCE_MS = 1000
OPEN_MS = 5000  # A's breaker stays open well past FENCE_MS, with room for a slow box
SETTINGS = {
    "MOLLIFIER_ENABLED": "true", "MOLLIFIER_TRIP_THRESHOLD": "0", "MOLLIFIER_REQUEST_KEY_FENCE_MS": str(FENCE_MS),
    "MOLLIFIER_REDIS_BREAKER_OPEN_MS": str(OPEN_MS), "MOLLIFIER_REDIS_BREAKER_FAILURES": "2",
}  # fmt: skip


def unkeyed(server: Gunicorn, secret: str) -> None:
    request = urllib.request.Request(
        server.url + TRIGGER, data=json.dumps({"payload": "{}"}).encode(), method="POST",
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200  # failed open: written directly


@pytest.mark.slow
@pytest.mark.single_redis("SIGSTOPs a redis-server of its own")
@pytest.mark.django_db(transaction=True)
def test_a_breaker_open_after_a_short_stall_does_not_record_a_request_key_in_postgres_alone(tmp_path, key_prefix):
    tenant = ensure_tenant("breaker-fence", "prod", enrol=True)
    secret = issue_api_key(tenant.env)[1]
    server = RedisServer(tmp_path / "buffer-redis").start()
    env = {**SETTINGS, "BUFFER_REDIS_URL": server.url, "MOLLIFIER_KEY_PREFIX": key_prefix}
    a = Gunicorn(env, workers=1)
    b = Gunicorn(env, workers=1)
    stopped = False
    probe = redis.Redis.from_url(server.url, socket_timeout=5)
    try:
        warm = [send(a, secret, str(uuid.uuid4()))[0], send(b, secret, str(uuid.uuid4()))[0]]
        server.proc.send_signal(signal.SIGSTOP)
        stopped = True
        stall_started = time.monotonic()
        unkeyed(a, secret)  # 250 ms request timeout, fails open
        unkeyed(a, secret)  # the second failure opens A's breaker for OPEN_MS
        time.sleep(max(0.0, 0.7 - (time.monotonic() - stall_started)))
        server.proc.send_signal(signal.SIGCONT)
        stopped = False
        # B triggers through Redis (keyed: the fence stays up) until A's first failure is FENCE_MS old.
        through_b = []
        while time.monotonic() - stall_started < FENCE_MS / 1000 + 0.3:
            through_b.append(send(b, secret, str(uuid.uuid4()))[0])
            time.sleep(0.1)
        assert time.monotonic() - stall_started < OPEN_MS / 1000, "too slow: A's breaker closed; the test shows nothing"
        key = str(uuid.uuid4())
        first, retried_a = send(a, secret, key)
        retry, _ = send(b, secret, key)  # the client lost A's answer and retried; B took it
        print(f"\nrequest-key-breaker: A answered {first} after {retried_a} 503s, B answered {retry}")
        assert retry == first, "one request key, two runs"
        ours = {run for run in every_run(probe, key_prefix, tenant.env) if run in {first, retry}}
        assert ours == {first}
        assert not set(warm + through_b) & {first}
        assert TaskRun.objects.filter(env=tenant.env, id__in=[first, retry]).count() <= 1
    finally:
        if stopped:
            server.proc.send_signal(signal.SIGCONT)
        a.stop()
        b.stop()
        probe.close()
        server.stop()
