"""The kick on idle → busy and the successor of a busy shard's task (docs/architecture.md#kick), with the
fan-out's tick as the safety net: real Redis, real Postgres, ``celery worker``/``beat`` subprocesses
(``tests.drainer.processes``). Triggers go through the HTTP API in this process; its kicks are sent by a real
Celery app on the test's private broker (the one the subprocesses consume), in place of the project's app.
A hung broker (a redis-server of the test's own, SIGSTOPped) costs one kicking trigger the bounded wait.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from collections import Counter

import pytest
import redis
from celery import Celery

from buffer import metrics as buffer_metrics
from buffer.buffer import Buffer
from buffer.keys import ShardKeys
from mollifier_project.celery import SEND_TIMEOUT_S, BoundedSender
from runs import kick
from runs.models import TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.drainer.processes import wait_until
from tests.drainer.test_processes import BASE_SETTINGS, assert_one_live_row_each, park
from tests.drainer.test_processes import start_cluster as start_cluster  # the process tests' fixture
from tests.factories import EnvironmentFactory, SnapshotFactory
from tests.redis_servers import redis_server

TRIGGER = "/api/v1/tasks/hello/trigger"
KICK_SETTINGS = {"SHARDS": 1, "ENABLED": True, "TRIP_THRESHOLD": 0, "DRAIN_KICK": True}


@pytest.fixture
def tenant(db):
    tenant = ensure_tenant("kick-org", "dev", enrol=True)
    return tenant, issue_api_key(tenant.env)[1]


def trigger(client, secret: str) -> str:
    """One buffered trigger through the API (TRIP_THRESHOLD=0 mollifies every one); its run id."""
    response = client.post(
        TRIGGER, data=json.dumps({"payload": '{"json":{"a":1}}'}), content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )  # fmt: skip
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"].startswith("run_") and not body["isCached"]
    return body["id"]


def kicks(result: str = "sent") -> float:
    return buffer_metrics.DRAIN_KICKS.labels(result=result)._value.get()


def waiting_drain_tasks(cluster) -> list[list[int]]:
    """The args of the drain tasks waiting in the test's broker (kombu's Redis list for the ``drain`` queue)."""
    with redis.Redis.from_url(cluster.broker_url) as broker:
        raw = broker.lrange(f"{cluster.broker_prefix}drain", 0, -1)
    return [json.loads(base64.b64decode(json.loads(message)["body"]))[0] for message in raw]


def mark(buffer: Buffer) -> str | None:
    return buffer._client.get(buffer.keys(0).drain_sent)


@pytest.fixture
def kick_via(monkeypatch):
    """Send this process's kicks through ``cluster``'s broker (a real Celery app, the subprocesses' broker)."""

    def use(cluster) -> None:
        monkeypatch.setattr(kick, "sender", BoundedSender(cluster.sender))

    return use


# ----------------------------------------------------------------------------------------------- kicks


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_trigger_into_an_idle_shard_sends_one_kick_and_triggers_behind_it_none(
    start_cluster, kick_via, client, tenant
):
    cluster, buffer = start_cluster(**KICK_SETTINGS)
    kick_via(cluster)
    (_, secret) = tenant
    sent = kicks()

    first = trigger(client, secret)
    assert waiting_drain_tasks(cluster) == [[0]]  # the shard's task, in the broker at once
    assert mark(buffer) is not None
    more = [trigger(client, secret) for _ in range(30)]
    assert waiting_drain_tasks(cluster) == [[0]]  # a task waits: the triggers behind it send nothing
    assert kicks() - sent == 1

    worker = cluster.start_worker("w1")  # no beat: the kick alone drains them all
    cluster.wait_ready(worker)
    ids = [first, *more]
    wait_until(lambda: TaskRun.objects.filter(id__in=ids).count() == len(ids), timeout=30, what="every row")
    assert_one_live_row_each(ids)
    wait_until(lambda: mark(buffer) is None, timeout=10, what="the mark dropped by the task that emptied the shard")
    assert kicks() - sent == 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_storm_into_a_busy_shard_kicks_once_and_its_tasks_keep_draining_without_a_tick(
    start_cluster, kick_via, client, tenant
):
    cluster, buffer = start_cluster(**KICK_SETTINGS, ROUND_BUDGET=10, DRAIN_TIME_BUDGET_MS=200)
    kick_via(cluster)
    (t, secret) = tenant
    backlog = park(buffer, [SnapshotFactory(env=t.env) for _ in range(3000)])  # parked without a kick
    worker = cluster.start_worker("w1")  # no beat
    cluster.wait_ready(worker)
    sent = kicks()

    storm = [trigger(client, secret) for _ in range(40)]
    # The shard stayed busy through the storm (its backlog lasts seconds in 10-entry rounds): else a second
    # kick would be a correct idle → busy transition, and this test would not test the storm.
    assert buffer.depth(0, t.env.id) > 0, "the backlog ran out during the storm"
    assert kicks() - sent == 1

    ids = [*backlog, *storm]
    wait_until(lambda: TaskRun.objects.filter(id__in=ids).count() == len(ids), timeout=120, what="every row")
    assert_one_live_row_each(ids)
    reports = cluster.drain_reports()
    assert len(reports) > 1  # the first task's budget ended with work due: successors, no tick, drained the rest
    assert not [r for r in reports if r["retval"].get("locked")]


@pytest.mark.django_db(transaction=True)
def test_kicks_off_send_nothing_and_set_no_mark(key_prefix, mollifier_settings, client, tenant, monkeypatch):
    mollifier_settings(**BASE_SETTINGS, **{**KICK_SETTINGS, "DRAIN_KICK": False})
    dead = Celery("no-broker", broker="redis://127.0.0.1:1/0", set_as_current=False)
    monkeypatch.setattr(kick, "sender", BoundedSender(dead))  # any send would be counted as failed
    (_, secret) = tenant
    before = kicks() + kicks("failed")
    trigger(client, secret)
    assert kicks() + kicks("failed") == before
    assert mark(Buffer.from_settings()) is None


@pytest.mark.django_db(transaction=True)
def test_a_kick_the_broker_refuses_never_fails_the_trigger_and_leaves_the_shard_to_the_tick(
    key_prefix, mollifier_settings, client, tenant, monkeypatch
):
    mollifier_settings(**BASE_SETTINGS, **KICK_SETTINGS)
    dead = Celery("no-broker", broker="redis://127.0.0.1:1/0", set_as_current=False)  # nothing listens on port 1
    monkeypatch.setattr(kick, "sender", BoundedSender(dead))
    (t, secret) = tenant
    failed = kicks("failed")
    run_id = trigger(client, secret)
    buffer = Buffer.from_settings()
    assert buffer.get(run_id, org_id=t.org.id) is not None  # parked, and answered 200
    assert kicks("failed") - failed == 1
    assert mark(buffer) is None  # dropped: the next tick sends the shard (claim_sends), not the mark's lapse
    assert buffer.claim_sends([0], ttl_ms=1000) == [0]


# The kick's bounded wait plus a loaded 2-core box's own work for one trigger. Before the bound, Celery's pooled
# connection waited on the hung broker with no socket timeout: the request never came back by itself.
KICKING_TRIGGER_BOUND_S = SEND_TIMEOUT_S + 2.0
QUIET_TRIGGER_BOUND_S = 0.5


@pytest.mark.django_db(transaction=True)
def test_a_hung_broker_costs_one_kicking_trigger_a_second_and_the_next_ones_nothing(
    key_prefix, mollifier_settings, client, tenant, monkeypatch, tmp_path
):
    mollifier_settings(**BASE_SETTINGS, **KICK_SETTINGS)
    (t, secret) = tenant
    buffer = Buffer.from_settings()
    with redis_server(tmp_path / "broker") as server:
        broker = Celery("hung-broker", broker=server.url, set_as_current=False)
        monkeypatch.setattr(kick, "sender", BoundedSender(broker, quiet_s=kick.QUIET_AFTER_FAILURE_S))
        sent, failed, skipped = kicks(), kicks("failed"), kicks("skipped")
        trigger(client, secret)  # healthy: the kick's connection is open, as in the field
        assert kicks() - sent == 1
        buffer.clear_send(0)  # the shard is idle again (as after its task ran): the next accept kicks
        server.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            hung_run = trigger(client, secret)
            hung_s = time.monotonic() - started
            started = time.monotonic()
            quiet_run = trigger(client, secret)
            quiet_s = time.monotonic() - started
        finally:
            server.proc.send_signal(signal.SIGCONT)
    print(f"\nhung-broker kick: kicking trigger {hung_s:.3f} s, the next one {quiet_s:.3f} s")
    assert hung_s < KICKING_TRIGGER_BOUND_S, hung_s
    assert kicks("failed") - failed == 1
    assert quiet_s < QUIET_TRIGGER_BOUND_S, quiet_s
    assert kicks("skipped") - skipped == 1  # not tried: no second wait on the hung broker
    for run_id in (hung_run, quiet_run):
        assert buffer.get(run_id, org_id=t.org.id) is not None  # answered 200 and parked
    assert mark(buffer) is None  # dropped: the tick, not the mark's lapse, sends the shard


# ------------------------------------------------------------------------------------------- safety net


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_kick_lost_in_the_broker_is_recovered_by_the_tick(start_cluster, kick_via, client, tenant):
    cluster, buffer = start_cluster(**KICK_SETTINGS, DRAIN_INTERVAL_S=0.2, DRAIN_TIME_BUDGET_MS=200)
    kick_via(cluster)
    (_, secret) = tenant
    run_id = trigger(client, secret)
    with redis.Redis.from_url(cluster.broker_url) as broker:
        assert broker.delete(f"{cluster.broker_prefix}drain") == 1  # the message is lost; its mark stays
    assert mark(buffer) is not None

    worker, beat = cluster.start_worker("w1"), cluster.start_beat()
    cluster.wait_ready(worker, beat)
    # The mark lapses with the kick's broker expiry (max(5 ticks, 10 budgets) = 2 s), then a tick sends it.
    wait_until(TaskRun.objects.filter(id=run_id).exists, timeout=30, what="the row, sent by a tick")
    assert_one_live_row_each([run_id])
    assert [e for e in cluster.events("task") if e["task"] == "drainer.fan_out"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_draining_a_kicked_shard_is_recovered_by_the_tick(start_cluster, kick_via, client, tenant):
    cluster, buffer = start_cluster(**KICK_SETTINGS, DRAIN_INTERVAL_S=0.2)
    kick_via(cluster)
    (_, secret) = tenant
    crasher = cluster.start_worker("crash", crash="after_commit")  # SIGKILLs itself between commit and ack
    cluster.wait_ready(crasher)
    ids = [trigger(client, secret) for _ in range(5)]
    wait_until(lambda: crasher.popen.poll() is not None, timeout=30, what="the kicked drain to die")

    worker, beat = cluster.start_worker("w1"), cluster.start_beat()
    cluster.wait_ready(worker, beat)
    entries = lambda: [buffer.get(i, org_id=tenant[0].org.id) for i in ids]  # noqa: E731
    wait_until(
        lambda: all(e is not None and e.status == "ACKED" for e in entries()), timeout=60, what="every entry acked"
    )
    assert_one_live_row_each(ids)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_while_busy_loses_no_kick_it_had_not_started(start_cluster, kick_via, client, tenant):
    """A kick sent while the only worker process drains another shard waits in the broker, not in that worker:
    a prefork worker that prefetched it (Celery's default: the main process reserves one more message per
    process while the child runs one) took it to its grave, and the shard's mark kept every tick away for the
    mark's life (the kick's broker expiry, 30 s here). Without prefetch the next worker takes it at once."""
    # A 3 s budget over 10-entry rounds keeps shard A's task running while the kick arrives.
    cluster, buffer = start_cluster(
        **{**KICK_SETTINGS, "SHARDS": 2}, DRAIN_INTERVAL_S=0.2, DRAIN_TIME_BUDGET_MS=3000, LEASE_MS=10_000,
        ROUND_BUDGET=10,
    )  # fmt: skip
    kick_via(cluster)
    (t, secret) = tenant
    kicked = buffer.shard_for(t.org.id)
    other = next(e for e in (EnvironmentFactory() for _ in range(50)) if buffer.shard_for(e.org_id) != kicked)
    park(buffer, [SnapshotFactory(env=other) for _ in range(3000)])  # shard A: seconds of 10-entry rounds
    busy = cluster.start_worker("busy", pool="prefork")  # the Procfile's pool; no beat yet
    cluster.wait_ready(busy)
    cluster.send_drain(1 - kicked)
    wait_until(lambda: buffer._client.exists(buffer.keys(1 - kicked).drain_lock), timeout=30, what="A's drain")

    run_id = trigger(client, secret)  # shard B idle: its kick goes to the broker while A drains
    time.sleep(0.5)  # a prefetching worker takes the message within a few ms
    waiting = waiting_drain_tasks(cluster)
    assert buffer._client.exists(buffer.keys(1 - kicked).drain_lock), "A's task ended before the kill"
    busy.kill_group()  # the node goes: main process and child
    killed_at = time.monotonic()
    worker, beat = cluster.start_worker("w1"), cluster.start_beat()
    cluster.wait_ready(worker, beat)
    ready_s = time.monotonic() - killed_at
    wait_until(TaskRun.objects.filter(id=run_id).exists, timeout=60, what="the kicked run's row")
    row_s = time.monotonic() - killed_at
    # Within a few ticks of the new worker being ready, not the mark's 30 s.
    said = f"row {row_s:.1f} s after the kill, worker ready after {ready_s:.1f} s; in the broker at the kill: {waiting}"
    assert row_s - ready_s < 5, said
    assert waiting == [[kicked]], said  # the kick waited in the broker, not in the busy worker
    assert_one_live_row_each([run_id])


# ------------------------------------------------------------------------------------------- successors


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_each_task_that_ends_with_work_due_sends_exactly_one_successor_and_two_workers_never_share_the_shard(
    start_cluster,
):
    # A 1 ms budget: every task runs one 10-entry round and ends on its budget with work due.
    cluster, buffer = start_cluster(SHARDS=1, ROUND_BUDGET=10, DRAIN_TIME_BUDGET_MS=1, DRAIN_KICK=True)
    env = EnvironmentFactory()
    ids = park(buffer, [SnapshotFactory(env=env) for _ in range(300)])
    workers = [cluster.start_worker("w1"), cluster.start_worker("w2")]  # no beat
    cluster.wait_ready(*workers)
    cluster.send_drain(0)  # as a kick or a tick would, once

    wait_until(lambda: TaskRun.objects.filter(id__in=ids).count() == 300, timeout=120, what="every row")
    assert_one_live_row_each(ids)
    wait_until(lambda: mark(buffer) is None, timeout=10, what="the last task to drop the mark")
    reports = [r["retval"] for r in cluster.drain_reports()]
    # One chain: 30 tasks of one full round each. A second successor anywhere would have shown as a task
    # that found the lock held, or as one that leased nothing.
    assert Counter(r.get("leased") for r in reports) == {10: 30}, reports
    assert {w["name"] for w in cluster.drain_reports()} <= {"w1", "w2"}
    created = [run for r in cluster.drain_reports() for run in r["created"]]
    assert Counter(created) == Counter(ids)  # each row by exactly one task: no two drained the shard at once


def test_next_send_keeps_the_mark_only_for_work_due_after_progress(key_prefix, mollifier_settings, redis_client):
    mollifier_settings(SHARDS=1)
    buffer = Buffer.from_settings()
    k: ShardKeys = buffer.keys(0)
    now = 1_000_000

    buffer.hold_send(0, ttl_ms=60_000)
    assert not buffer.next_send(0, now_ms=now, ttl_ms=60_000, progressed=True)  # nothing due: dropped
    assert mark(buffer) is None

    redis_client.zadd(k.retry, {"run_later": now + 1})  # a retry not yet due: the tick takes it when it is
    buffer.hold_send(0, ttl_ms=60_000)
    assert not buffer.next_send(0, now_ms=now, ttl_ms=60_000, progressed=True)
    redis_client.zadd(k.leases, {"run_lease": now})  # an expired lease is due
    buffer.hold_send(0, ttl_ms=60_000)
    assert buffer.next_send(0, now_ms=now, ttl_ms=5_000, progressed=True)
    assert 0 < buffer._client.pttl(k.drain_sent) <= 5_000  # kept for the successor, with its broker expiry
    assert not buffer.next_send(0, now_ms=now, ttl_ms=5_000, progressed=False)  # no progress: no loop
    assert mark(buffer) is None
    redis_client.zadd(k.retry, {"run_due": now})
    assert buffer.next_send(0, now_ms=now, ttl_ms=5_000, progressed=True)
