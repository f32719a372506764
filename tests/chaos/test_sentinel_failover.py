"""A Sentinel failover in the middle of a trigger storm (docs/operations.md#redis-sentinel).

Real processes throughout: a primary, its replica and one sentinel (quorum 1, ``down-after-milliseconds``
``DOWN_MS``: one sentinel decides alone, which keeps the failover near a second; production runs three or more, which
changes who decides, not what the clients see), gunicorn serving the API with
``BUFFER_REDIS_URL=redis+sentinel://…``, and clients that trigger over HTTP as the SDK does: a fresh
``x-trigger-request-idempotency-key`` per logical call, reused on each retry of a 503 that says
``x-should-retry: true``. The primary is SIGKILLed mid-storm; the sentinel promotes the replica; the old
primary comes back as the new primary's replica (what a supervisor plus Sentinel's reconfiguration do); the
storm goes on; then the buffer is drained in this process through the same Sentinel URL.

``ACCEPT_DURABILITY=replica``: every run answered 200 becomes exactly one row. ``none``: the runs answered
by the old primary and not yet on the replica when it died are lost; the test counts and prints them
(``sentinel:`` lines) and checks only that no row appears twice or unanswered.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from buffer.buffer import Buffer
from drainer import drain
from drainer.limits import DrainLimits
from runs.models import TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.drainer.processes import settings_env, wait_until
from tests.live import Gunicorn
from tests.redis_servers import sentinel_managed, wait_for_replica

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CLIENTS = 6
# The sentinel marks the primary down after this long without an answer. 300 ms on this noisy 2-core machine let
# it take a promoted primary busy with its first full sync for dead, too, and start a second failover.
DOWN_MS = 500
BEFORE_KILL_S = 1.5
AFTER_PROMOTION_S = 3.0
CALL_DEADLINE_S = 20.0  # one logical call, all its retries included
RETRY_PAUSE_S = 0.05  # the SDK backs off longer; a short pause keeps the test short and the window busy


@dataclass(frozen=True, slots=True)
class Call:
    run_id: str
    refused: int  # 503s (x-should-retry: true) before the 200
    broken: int  # connections that failed before the 200 (gunicorn answered nothing)
    answered_at: float  # time.monotonic() of the 200


def trigger_until_answered(conn_factory: Callable[[], http.client.HTTPConnection], secret: str) -> Call:
    """One logical trigger, retried as the SDK retries it, until it is answered 200."""
    key = uuid.uuid4().hex
    body = json.dumps({"payload": json.dumps({"key": key})})
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json",
               "x-trigger-request-idempotency-key": key}  # fmt: skip
    refused = broken = 0
    deadline = time.monotonic() + CALL_DEADLINE_S
    conn = conn_factory()
    try:
        while True:
            assert time.monotonic() < deadline, f"a trigger went unanswered for {CALL_DEADLINE_S} s"
            try:
                conn.request("POST", "/api/v1/tasks/sentinel-task/trigger", body=body, headers=headers)
                response = conn.getresponse()
                text = response.read().decode()
            except (OSError, http.client.HTTPException):
                broken += 1
                conn.close()
                conn = conn_factory()
                time.sleep(RETRY_PAUSE_S)
                continue
            if response.status == 200:
                return Call(json.loads(text)["id"], refused, broken, time.monotonic())
            assert response.status == 503 and response.getheader("x-should-retry") == "true", (response.status, text)
            refused += 1
            time.sleep(RETRY_PAUSE_S)
    finally:
        conn.close()


def client_loop(url: str, secret: str, stop: threading.Event) -> list[Call]:
    host, port = url.removeprefix("http://").split(":")
    calls = []
    while not stop.is_set():
        calls.append(trigger_until_answered(lambda: http.client.HTTPConnection(host, int(port), timeout=10), secret))
    return calls


def drain_everything(buffer: Buffer, limits: DrainLimits) -> None:
    deadline = time.monotonic() + 30
    while busy := drain.shards_with_work(buffer, offset=0):
        assert time.monotonic() < deadline, f"shards {busy} still have work after 30 s of draining"
        for shard in busy:
            drain.drain_shard(buffer, shard=shard, limits=limits)


@pytest.mark.parametrize("durability", ["replica", "none"])
def test_a_sentinel_failover_mid_storm_loses_no_answered_run_under_replica_durability(
    durability, tmp_path, settings, mollifier_settings
):
    values = {
        "ENABLED": True, "TRIP_THRESHOLD": 0, "ACCEPT_DURABILITY": durability, "ACCEPT_WAIT_MS": 500,
        "REDIS_BREAKER_OPEN_MS": 250, "KEY_PREFIX": f"sentinel-{uuid.uuid4().hex[:8]}", "SHARDS": 4,
    }  # fmt: skip
    with sentinel_managed(tmp_path, down_ms=DOWN_MS) as (primary, replica, sentinel):
        url = f"redis+sentinel://127.0.0.1:{sentinel.port}/{sentinel.service}"
        settings.BUFFER_REDIS_URL = url
        cfg = mollifier_settings(**values)
        tenant = ensure_tenant("sentinel", durability, enrol=True)
        secret = issue_api_key(tenant.env)[1]
        web = Gunicorn({"BUFFER_REDIS_URL": url, **settings_env(values)}, workers=2)
        try:
            stop = threading.Event()
            with ThreadPoolExecutor(CLIENTS) as pool:
                futures = [pool.submit(client_loop, web.url, secret, stop) for _ in range(CLIENTS)]
                try:
                    time.sleep(BEFORE_KILL_S)
                    killed_at = time.monotonic()
                    primary.kill()
                    wait_until(lambda: sentinel.primary_port() == replica.port, timeout=15, what="the promotion")
                    promoted_at = time.monotonic()
                    # Back as the new primary's replica (empty: SIGKILL, no persistence), as a supervisor would.
                    primary.args = (*primary.args, "--replicaof", "127.0.0.1", str(replica.port))
                    primary.start()
                    wait_for_replica(primary)
                    time.sleep(AFTER_PROMOTION_S)
                finally:
                    stop.set()
                calls = [call for future in futures for call in future.result()]
        finally:
            web.stop()

        drain_everything(Buffer.from_settings(), DrainLimits.from_settings(cfg))
        rows = list(TaskRun.objects.filter(env_id=tenant.env.id).values_list("id", flat=True))

    answered = {call.run_id for call in calls}
    before = sum(call.answered_at < killed_at for call in calls)
    after = sum(call.answered_at > promoted_at for call in calls)
    times = sorted(call.answered_at for call in calls)
    around_kill = [b - a for a, b in itertools.pairwise(times) if b > killed_at and a < promoted_at + 1]
    lost = answered - set(rows)
    print(
        f"\nsentinel: ACCEPT_DURABILITY={durability}: {len(calls)} triggers answered 200 ({before} before the kill, "
        f"{after} after the promotion); {sum(c.refused for c in calls)} 503s answered and "
        f"{sum(c.broken for c in calls)} broken connections on the way; the sentinel promoted the replica "
        f"{promoted_at - killed_at:.2f} s after the SIGKILL; the longest time without a 200 around it "
        f"{max(around_kill, default=0):.2f} s; {len(rows)} rows; answered but lost: {len(lost)}"
    )
    assert before > 0 and after > 0, "the storm must span the failover"
    assert len(answered) == len(calls), "two logical calls were answered with one run"
    assert len(rows) == len(set(rows))
    assert set(rows) <= answered, "a row no trigger was answered with"
    if durability == "replica":
        assert not lost, f"{len(lost)} runs answered 200 were lost: {sorted(lost)[:5]}"
