"""End to end (docs/architecture.md#processes-and-data-flow, #guarantees): a trigger storm over HTTP with the gate tripped, drained by a real Celery
worker and beat, becomes exactly one row per answered run — within the time the drain benchmark predicts.

Everything is a real process: gunicorn (2 sync workers) serving the API, ``celery -A mollifier_project
worker`` (prefork, 2 processes, queue ``drain``) and ``celery beat`` with ``MOLLIFIER_DRAINER_ENABLED=true``,
Postgres and Redis. Nothing is patched. The worker's broker is a private ``redis-server`` the test starts
(``tests/redis_servers.py``), or ``E2E_BROKER_URL`` if set (its project queues are emptied before and after):
a broker shared with another checkout's storm hands each worker the other's ``drain_shard`` tasks, which
drain the wrong buffer and leave this one's shard marks held for the send expiry (20 s), so shards stall
and rows appear before beat starts. Every process is killed by its process group id when the test ends,
pass or fail.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from django.conf import settings

from buffer.buffer import Buffer
from runs.models import RunStatus, TaskRun
from runs.tenants import ensure_tenant, issue_api_key
from tests.live import ROOT, Gunicorn, database_url_of_test_db
from tests.redis_servers import redis_server

TRIGGERS = int(os.environ.get("E2E_TRIGGERS", "20000"))  # a smaller storm for a quick look: E2E_TRIGGERS=500
ORGS = 3
CONNECTIONS = 16
GUNICORN_WORKERS = 3
# Drain rate measured by ``python -m bench.drain --runs 100000 --envs 10`` on the 2-core development
# machine (worker ×2 + beat): median 14,300 rows/s when quiet, 8,000–10,000 under other jobs' load. The
# deadline takes 10,000 with a factor of 4, plus beat's start-up and first tick (DRAIN_INTERVAL_S = 1 s).
MEASURED_DRAIN_ROWS_PER_S = 10_000
SLACK_FACTOR = 4
BEAT_START_S = 5.0
DRAIN_DEADLINE_S = TRIGGERS / MEASURED_DRAIN_ROWS_PER_S * SLACK_FACTOR + BEAT_START_S
WORKER_START_S = 30.0

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@contextmanager
def private_broker(data_dir: Path) -> Iterator[str]:
    """``E2E_BROKER_URL`` (it must be this run's alone), else a ``redis-server`` of this test's own."""
    explicit = os.environ.get("E2E_BROKER_URL")
    if explicit:
        yield explicit
        return
    with redis_server(data_dir) as server:
        yield server.url


def clear_broker(url: str) -> None:
    """Drop this project's Celery queues (and kombu's bindings) from the broker database."""
    client = redis.Redis.from_url(url)
    try:
        names = [b"drain", b"sweep", b"default", b"unacked", b"unacked_index", b"unacked_mutex"]
        client.delete(*names, *client.scan_iter(match="_kombu.binding*"))
    finally:
        client.close()


class Celery:
    """``celery worker`` and ``celery beat`` for the project, each the leader of its own session."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> None:
        log = (self.log_dir / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "mollifier_project", *args],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()  # the child holds its own descriptor

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.log("worker"):
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited:\n{self.log(name)[-3000:]}"
            assert time.monotonic() < deadline, f"worker not ready in {timeout} s:\n{self.log('worker')[-3000:]}"
            time.sleep(0.05)

    def errors(self) -> list[str]:
        marks = (" ERROR ", '"level": "ERROR"', "CRITICAL", "Traceback")
        return [
            line for name in self.processes for line in self.log(name).splitlines() if any(m in line for m in marks)
        ]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the prefork children too, by process group
            except ProcessLookupError:
                pass
            process.wait()


def fire(url: str, secrets: list[str], count: int) -> list[tuple[int, int, str]]:
    """``count`` triggers over ``CONNECTIONS`` keep-alive connections, round robin over the orgs' keys.
    Returns (org index, HTTP status, body) per trigger."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port

    def connection_worker(first: int) -> list[tuple[int, int, str]]:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        answers = []
        try:
            for i in range(first, count, CONNECTIONS):
                org = i % len(secrets)
                body = json.dumps({"payload": json.dumps({"json": {"i": i}}), "options": {"tags": [f"org-{org}"]}})
                headers = {"Authorization": f"Bearer {secrets[org]}", "Content-Type": "application/json"}
                conn.request("POST", "/api/v1/tasks/e2e-task/trigger", body=body, headers=headers)
                response = conn.getresponse()
                answers.append((org, response.status, response.read().decode()))
        finally:
            conn.close()
        return answers

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        return [answer for part in pool.map(connection_worker, range(CONNECTIONS)) for answer in part]


def test_twenty_thousand_buffered_triggers_become_exactly_twenty_thousand_rows(key_prefix, tmp_path):
    with private_broker(tmp_path / "broker") as broker:
        storm(broker, key_prefix, tmp_path)


def storm(broker: str, key_prefix: str, tmp_path: Path) -> None:
    started = time.monotonic()
    tenants = [ensure_tenant(f"e2e-org-{i}", "prod", enrol=True) for i in range(ORGS)]
    secrets = [issue_api_key(t.env)[1] for t in tenants]
    mollifier_env = {
        "MOLLIFIER_ENABLED": "true",
        "MOLLIFIER_TRIP_THRESHOLD": "0",  # every trigger of an enrolled org trips the gate: all are buffered
        "MOLLIFIER_DRAINER_ENABLED": "true",
        "MOLLIFIER_KEY_PREFIX": key_prefix,
    }
    clear_broker(broker)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")}
    env.update(
        DATABASE_URL=database_url_of_test_db(), REDIS_URL=settings.REDIS_URL, CELERY_BROKER_URL=broker,
        LOG_LEVEL="INFO", **mollifier_env,
    )  # fmt: skip
    celery = Celery(env, tmp_path)
    server = None
    try:
        celery.start(
            "worker", "worker", "--pool", "prefork", "--concurrency", "2", "--queues", "drain",
            "--hostname", f"e2e-{key_prefix}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "INFO",
        )  # fmt: skip
        server = Gunicorn(mollifier_env, workers=GUNICORN_WORKERS)

        fire_started = time.monotonic()
        answers = fire(server.url, secrets, TRIGGERS)
        fire_s = time.monotonic() - fire_started
        server.stop()
        server = None
        # The worker started with the storm (and idled: nothing drains without beat's ticks); the drain,
        # and the deadline, start with beat.
        celery.wait_ready(WORKER_START_S)
        assert TaskRun.objects.count() == 0
        celery.start("beat", "beat", "--schedule", str(tmp_path / "beat-schedule"), "--loglevel", "INFO")
        drain_from = time.monotonic()
        buffer = Buffer.from_settings()
        while TaskRun.objects.count() < TRIGGERS or any(buffer.shard_has_work()):
            assert time.monotonic() - drain_from < DRAIN_DEADLINE_S, (
                f"{TaskRun.objects.count()} of {TRIGGERS} rows after {DRAIN_DEADLINE_S:.1f} s "
                f"(predicted from {MEASURED_DRAIN_ROWS_PER_S} rows/s × {SLACK_FACTOR})\n{celery.log('worker')[-3000:]}"
            )
            time.sleep(0.1)
        drain_s = time.monotonic() - drain_from
        errors = celery.errors()
    finally:
        if server is not None:
            server.stop()
        celery.stop()
        clear_broker(broker)

    assert Counter(status for _, status, _ in answers) == {200: TRIGGERS}, [a for a in answers if a[1] != 200][:3]
    ids = [json.loads(body)["id"] for _, _, body in answers]
    assert len(set(ids)) == TRIGGERS  # every answer a distinct run
    assert not any(json.loads(body)["isCached"] for _, _, body in answers)

    rows = TaskRun.objects.filter(id__in=ids)
    assert rows.count() == TRIGGERS and TaskRun.objects.count() == TRIGGERS  # no missing row, no extra row
    assert Counter(rows.values_list("buffered", "status")) == {(True, RunStatus.PENDING): TRIGGERS}
    per_org = Counter(rows.values_list("org_id", flat=True))
    assert per_org == Counter(tenants[org].org.id for org, _, _ in answers)
    assert not any(buffer.shard_has_work())  # queued, retrying and leased: all empty
    assert errors == []
    total_s = time.monotonic() - started
    print(f"\nfired {TRIGGERS} in {fire_s:.1f} s ({TRIGGERS / fire_s:,.0f}/s); drained the rest in {drain_s:.1f} s "
          f"(deadline {DRAIN_DEADLINE_S:.1f} s); total {total_s:.1f} s")  # fmt: skip
