"""The official SDK's ``runs.list`` and ``runs.bulk.*`` against gunicorn, a real Celery worker and the real
drain, each on a direct env (rows) and on a buffered env (docs/api.md#list-runs, #bulk-actions).

The module has a broker of its own (a throwaway ``redis-server``): the web enqueues bulk-action tasks there
and the worker started here consumes them and the drain ticks the test sends — no other test's worker can
take them. Runs and entries live under the module's key prefix on the shared Redis.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.request
import uuid

import pytest
import redis as redis_lib
from celery import Celery
from django.conf import settings

from buffer.buffer import Buffer
from buffer.client import CLIENT_OPTIONS
from buffer.values import AcceptStatus
from runs import engine
from runs.models import RunStatus, TaskRun
from runs.snapshot import to_snapshot
from runs.tenants import ensure_tenant, issue_api_key
from tests.drainer.processes import Process, wait_until
from tests.factories import SnapshotFactory
from tests.live import Gunicorn, database_url_of_test_db
from tests.redis_servers import RedisServer
from tests.sdk.test_sdk import sdk

pytestmark = pytest.mark.django_db(transaction=True)

SERVICE_ENV = {
    "MOLLIFIER_ENABLED": "true",
    "MOLLIFIER_TRIP_THRESHOLD": "0",
    "MOLLIFIER_MUTATE_WAIT_MS": "300",
    "MOLLIFIER_DRAINER_ENABLED": "true",
    # The drain runs when the test sends a tick, so a storm's runs are seen while still buffered: no kick (on by
    # default, it would drain them within milliseconds of their accept).
    "MOLLIFIER_DRAIN_KICK": "false",
    "MOLLIFIER_SHARDS": "1",
}


class Stack:
    """gunicorn + one solo Celery worker (queues default and drain) on a private broker."""

    def __init__(self, tmp) -> None:
        self.prefix = f"mbulk-{uuid.uuid4().hex[:10]}"
        self.broker = RedisServer(tmp / "broker").start()
        env = {**SERVICE_ENV, "MOLLIFIER_KEY_PREFIX": self.prefix, "CELERY_BROKER_URL": self.broker.url}
        self.web = Gunicorn(env)
        worker_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")},
            **env, "DATABASE_URL": database_url_of_test_db(), "REDIS_URL": settings.REDIS_URL,
            "MOLLIFIER_DRAIN_TIME_BUDGET_MS": "100", "MOLLIFIER_ROUND_BUDGET": "50",
        }  # fmt: skip
        self.worker = Process(
            "bulk-worker",
            [sys.executable, "-m", "celery", "-A", "mollifier_project", "worker", "--pool", "solo", "--queues",
             "default,drain", "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO"],
            worker_env, tmp / "worker.log",
        )  # fmt: skip
        self.sender = Celery("bulk-test-sender", broker=self.broker.url, set_as_current=False)
        self._ticking = threading.Event()
        self._ticker: threading.Thread | None = None

    def drain_ticks(self, every: float = 0.1) -> None:
        """Send drain ticks for shard 0 until ``stop_ticks`` — the drain moves entries while the test reads."""
        self._ticking.set()

        def tick() -> None:
            while self._ticking.is_set():
                self.sender.send_task("drainer.drain_shard", args=(0,), queue="drain", expires=2)
                time.sleep(every)

        self._ticker = threading.Thread(target=tick, daemon=True)
        self._ticker.start()

    def stop_ticks(self) -> None:
        self._ticking.clear()
        if self._ticker:
            self._ticker.join(5)

    def stop(self) -> None:
        self.stop_ticks()
        self.web.stop()
        self.worker.stop()
        self.sender.close()
        self.broker.stop()
        client = redis_lib.Redis.from_url(settings.REDIS_URL)
        keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture(scope="module")
def stack(django_db_setup, django_db_blocker, tmp_path_factory):
    live = Stack(tmp_path_factory.mktemp("bulk-stack"))
    yield live
    live.stop()


@pytest.fixture(params=["direct", "buffered"])
def tenant(request):
    """A key for an env whose triggers are rows (direct) or all buffered (buffered), with a unique task."""
    enrolled = request.param == "buffered"
    made = ensure_tenant(f"bulk-{request.param}-{uuid.uuid4().hex[:6]}", "dev", enrol=enrolled)
    return request.param, made.env, issue_api_key(made.env)[1], f"task-{uuid.uuid4().hex[:8]}"


def http_trigger(url: str, secret: str, task: str) -> None:
    request = urllib.request.Request(
        f"{url}/api/v1/tasks/{task}/trigger",
        data=json.dumps({"payload": '{"json":{}}', "options": {"payloadType": "application/super+json"}}).encode(),
        headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()


def test_list_during_a_storm_sees_every_run_exactly_once_across_pages(stack, tenant):
    kind, _, secret, task = tenant
    made = sdk(stack.web, secret, "triggerMany", task=task, count=120)
    assert made["ok"], made
    existing = made["result"]
    assert TaskRun.objects.filter(id__in=existing).count() == (120 if kind == "direct" else 0)
    storming = threading.Event()
    storming.set()

    def storm() -> None:  # more triggers keep arriving while the list is walked
        while storming.is_set():
            http_trigger(stack.web.url, secret, task)

    storm_thread = threading.Thread(target=storm, daemon=True)
    storm_thread.start()
    stack.drain_ticks()
    try:
        out = sdk(stack.web, secret, "listPages", query={"taskIdentifier": task}, limit=10, pauseMs=150)
    finally:
        storming.clear()
        storm_thread.join(10)
        stack.stop_ticks()
    assert out["ok"], out
    listed = [run["id"] for page in out["result"] for run in page]
    assert len(listed) == len(set(listed)), "a run was listed twice"
    assert set(existing) <= set(listed)
    order = [(run["createdAt"], run["id"].encode()) for page in out["result"] for run in page]
    assert order == sorted(order, reverse=True)
    if kind == "buffered":
        assert TaskRun.objects.filter(id__in=existing).exists(), "the drain moved nothing during the walk"


def make_runs(stack: Stack, kind: str, env, task: str, count: int) -> None:
    """``count`` runs as the trigger path leaves them, made fast: rows through the engine's bulk insert
    (direct), or entries through the buffer's accept (buffered) — the SDK would take minutes for 10,000."""
    if kind == "direct":
        for start in range(0, count, 2000):
            snapshots = [SnapshotFactory(env=env, task_identifier=task) for _ in range(min(2000, count - start))]
            engine.materialise_many(snapshots, buffered=False)
        return
    client = redis_lib.Redis.from_url(settings.REDIS_URL, **CLIENT_OPTIONS)
    buffer = Buffer(client, prefix=stack.prefix, shards=1)
    for _ in range(count):
        s = SnapshotFactory(env=env, task_identifier=task)
        result = buffer.accept(
            run_id=s.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(s), now_ms=int(time.time() * 1000),
            idempotency=None, max_per_env=1_000_000,
        )  # fmt: skip
        assert result.status is AcceptStatus.ACCEPTED
    client.close()


def test_bulk_cancel_of_10000_runs_ends_with_every_one_canceled(stack, tenant):
    kind, env, secret, task = tenant
    make_runs(stack, kind, env, task, 10_000)
    rows_before = TaskRun.objects.filter(env=env).count()
    assert rows_before == (10_000 if kind == "direct" else 0)
    started = time.monotonic()
    created = sdk(stack.web, secret, "bulkCancel", body={"filter": {"taskIdentifier": task}, "name": "storm"})
    assert created["ok"], created
    done = sdk(stack.web, secret, "bulkPoll", id=created["result"]["id"])
    elapsed = time.monotonic() - started
    assert done["ok"], done
    assert done["result"]["status"] == "COMPLETED"
    assert done["result"]["counts"] == {"total": 10_000, "success": 10_000, "failure": 0}
    print(f"\nbulk cancel of 10,000 {kind} runs: {elapsed:.1f} s, {10_000 / elapsed:,.0f} runs/s")
    live = sdk(
        stack.web, secret, "listPages", query={"taskIdentifier": task, "status": ["QUEUED", "DELAYED"]}, limit=100
    )
    assert live["ok"] and not any(live["result"]), live  # nothing is live any more, buffered or not
    if kind == "buffered":
        assert TaskRun.objects.filter(env=env).count() == 0  # cancelled before reaching Postgres
        stack.drain_ticks(every=0.2)
        try:
            wait_until(lambda: TaskRun.objects.filter(env=env).count() == 10_000, timeout=240, what="the drain")
        finally:
            stack.stop_ticks()
    statuses = set(TaskRun.objects.filter(env=env).values_list("status", flat=True))
    assert statuses == {RunStatus.CANCELED}


def test_another_envs_key_gets_404_for_bulk_actions_and_never_sees_its_runs(stack, tenant):
    _, _, secret, task = tenant
    stranger = issue_api_key(ensure_tenant(f"bulk-stranger-{uuid.uuid4().hex[:6]}", "dev", enrol=True).env)[1]
    run_id = sdk(stack.web, secret, "trigger", task=task, payload={})["result"]["id"]
    created = sdk(stack.web, secret, "bulkCancel", body={"runIds": [run_id]})
    assert created["ok"], created
    action_id = created["result"]["id"]
    for op in ("bulkRetrieve", "bulkAbort"):
        out = sdk(stack.web, stranger, op, id=action_id)
        assert not out["ok"] and out["error"]["status"] == 404, (op, out)
    assert sdk(stack.web, stranger, "bulkList")["result"] == []
    assert sdk(stack.web, stranger, "list", query={"taskIdentifier": task})["result"] == []
    theirs = sdk(stack.web, stranger, "bulkCancel", body={"runIds": [run_id]})
    assert sdk(stack.web, stranger, "bulkPoll", id=theirs["result"]["id"])["result"]["counts"]["success"] == 0
    mine = sdk(stack.web, secret, "bulkPoll", id=action_id)["result"]
    assert mine["counts"] == {"total": 1, "success": 1, "failure": 0}
    assert sdk(stack.web, secret, "retrieve", id=run_id)["result"]["status"] == "CANCELED"
    listed = sdk(stack.web, secret, "bulkList")["result"]
    assert action_id in [a["id"] for a in listed]


def test_bad_bulk_filter_and_bad_list_filter_are_400_naming_the_field(stack, tenant):
    _, _, secret, _ = tenant
    empty = sdk(stack.web, secret, "bulkCancel", body={"filter": {}})
    assert empty["error"]["status"] == 400 and "At least one filter" in empty["error"]["message"], empty
    bad = sdk(stack.web, secret, "bulkCancel", body={"filter": {"status": "PENDING"}})
    assert bad["error"]["status"] == 400 and "filter.status" in bad["error"]["message"], bad
    listed = sdk(stack.web, secret, "list", query={"status": "PENDING"})
    assert listed["error"]["status"] == 400 and "filter[status]" in listed["error"]["message"], listed


def test_bulk_replay_by_ids_makes_one_new_run_each(stack, tenant):
    _, _, secret, task = tenant
    ids = sdk(stack.web, secret, "triggerMany", task=task, count=3)["result"]
    created = sdk(stack.web, secret, "bulkReplay", body={"runIds": ids})
    done = sdk(stack.web, secret, "bulkPoll", id=created["result"]["id"])["result"]
    assert done["counts"] == {"total": 3, "success": 3, "failure": 0}
    listed = sdk(stack.web, secret, "list", query={"taskIdentifier": task})["result"]
    assert len(listed) == 6 and set(ids) < {r["id"] for r in listed}
