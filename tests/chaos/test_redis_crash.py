"""Chaos: the buffer's Redis SIGKILLed and restarted from its AOF (``appendfsync always``) during a storm of
accepts while a worker drains (docs/architecture.md#durability, #race-analysis "Redis lost after commit",
#guarantees 1).

The buffer's Redis is a redis-server of the test's own (tests/redis_servers.py): ``settings.REDIS_URL``
points at it before the cluster starts, so the accepting threads here and the worker and beat
subprocesses (their ``REDIS_URL``) use it; the Celery broker stays on the shared ``DRAIN_TEST_BROKER_URL``
(db 15). The server is SIGKILLed ``KILLS`` times while the storm and the drain run, each time restarted on
the same port and data directory after ``DOWN_S``.

Accepts are single ``Buffer.accept`` calls from ``THREADS`` threads, as web workers make them. An accept
that raised (Redis gone) was not answered; the client retries it later under the same run id, as the
trigger path's request key makes a real client do: DUPLICATE for its own run id means the first attempt
did reach the AOF (its reply was lost), ACCEPTED that it did not. So every trigger ends answered, and each
answered run must become exactly one row.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest

from buffer import client as buffer_module
from buffer.buffer import Buffer, BufferUnavailable
from buffer.values import AcceptStatus
from mollifier_project.clock import now_ms as wall_clock_ms
from runs.models import RunStatus, TaskRun
from runs.snapshot import Snapshot, to_snapshot
from tests.chaos.storm import (
    Storm,
    assert_buffer_consistent,
    buffer_state,
    dead_letters,
    envs_over_shards,
    in_flight,
    rows_of_envs,
)
from tests.drainer.processes import broker_url, wait_until
from tests.redis_servers import RedisServer

SHARDS = 2
THREADS = 4
STORM_S = 12.0
KILLS = 3
DOWN_S = 1.0


class Accepter(threading.Thread):
    """Accepts snapshots one call at a time until ``halt``; an accept that raised is kept for a retry."""

    def __init__(self, buffer: Buffer, storm: Storm, halt: threading.Event) -> None:
        super().__init__(daemon=True)
        self.buffer, self.storm, self.halt = buffer, storm, halt
        self.attempted: list[Snapshot] = []
        self.answered: dict[str, str] = {}  # run id → ACCEPTED | DUPLICATE (a retry of an accept that did land)
        self.unanswered: list[Snapshot] = []
        self.errors = 0
        self.error: BaseException | None = None

    def accept(self, s: Snapshot, *, retry: bool) -> bool:
        try:
            result = self.buffer.accept(
                run_id=s.id, env_id=s.env_id, org_id=s.org_id, snapshot=to_snapshot(s), now_ms=wall_clock_ms(),
                idempotency=None, max_per_env=1_000_000,
            )  # fmt: skip
        except BufferUnavailable:
            self.errors += 1
            return False
        # DUPLICATE for its own run id: an earlier attempt (ours, or redis-py's one retry) did land.
        assert result.status in (AcceptStatus.ACCEPTED, AcceptStatus.DUPLICATE), result
        self.answered[s.id] = result.status.value
        return True

    def retry_unanswered(self) -> None:
        self.unanswered = [s for s in self.unanswered if not self.accept(s, retry=True)]

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                if self.unanswered:
                    self.retry_unanswered()
                (s,) = self.storm.snapshots(1)
                self.attempted.append(s)
                if not self.accept(s, retry=False):
                    self.unanswered.append(s)
                    self.halt.wait(0.05)
        except BaseException as exc:  # reported in the test's thread
            self.error = exc


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_redis_sigkilled_mid_storm_with_aof_always_every_answered_accept_becomes_one_row(
    start_cluster, settings, tmp_path, monkeypatch
):
    started = time.monotonic()
    shared_broker = broker_url()  # the broker stays on the shared Redis, whatever REDIS_URL becomes below
    monkeypatch.setenv("DRAIN_TEST_BROKER_URL", shared_broker)
    server = RedisServer(tmp_path / "buffer-redis", "--appendonly", "yes", "--appendfsync", "always").start()
    settings.REDIS_URL = server.url  # the buffer's Redis, here and (through the cluster's env) in the subprocesses
    accepters: list[Accepter] = []
    try:
        cluster, buffer = start_cluster(SHARDS=SHARDS, DRAIN_INTERVAL_S=0.5, ROUND_BUDGET=200)
        assert cluster.env["REDIS_URL"] == server.url and cluster.broker_url == shared_broker
        envs = envs_over_shards(SHARDS)
        storm = Storm(buffer, envs)
        worker, beat = cluster.start_worker("w1"), cluster.start_beat()
        cluster.wait_ready(worker, beat)

        halt = threading.Event()
        accepters = [Accepter(buffer, storm, halt) for _ in range(THREADS)]
        for a in accepters:
            a.start()
        kills: list[dict] = []
        rng = random.Random()
        for _ in range(KILLS):
            time.sleep(STORM_S / (KILLS + 1) + rng.uniform(-0.5, 0.5))
            answered_before = sum(len(a.answered) for a in accepters)
            leased = in_flight(buffer)
            server.kill()
            killed_at = time.monotonic()
            time.sleep(DOWN_S)
            server.start()  # same port and data directory: it replays the AOF
            kills.append({"answered": answered_before, "leased": leased, "restart_s": round(time.monotonic() - killed_at, 2),
                          "rows": rows_of_envs(envs)})  # fmt: skip
        time.sleep(STORM_S / (KILLS + 1))
        halt.set()
        for a in accepters:
            a.join(30)
            assert a.error is None, a.error
        storm_s = time.monotonic() - started
        for a in accepters:  # Redis is up: the last unanswered accepts get their answer
            wait_until(lambda a=a: (a.retry_unanswered(), not a.unanswered)[1], timeout=10, what="retried accepts")

        answered = {run_id: how for a in accepters for run_id, how in a.answered.items()}
        attempted = [s for a in accepters for s in a.attempted]
        wait_until(
            lambda: rows_of_envs(envs) >= len(answered) and not any(buffer.shard_has_work()),
            timeout=60, interval=0.2, what="the drain to catch up",
        )  # fmt: skip
        drained_s = time.monotonic() - started
        state = buffer_state(buffer, envs)
        dead = dead_letters(buffer)
        reports = [r["retval"] for r in cluster.drain_reports() if r["retval"] and not r["retval"].get("locked")]
        # Tasks that failed on the Redis outage (the harness's own event receiver fails too; not counted).
        failed_tasks = Counter(
            line.split("raised unexpected: ")[1].split('"')[0]
            for line in worker.log.read_text(errors="replace").splitlines()
            if '"logger": "celery.app.trace"' in line and "raised unexpected: " in line
        )
        assert_buffer_consistent(buffer, cluster, beat)
    finally:
        for a in accepters:
            a.halt.set()
        server.stop()
        buffer_module._clients.pop(server.url, None)  # this process's client of a server that is gone

    rows = TaskRun.objects.filter(env_id__in=[env.id for env in envs])
    row_ids = Counter(rows.values_list("id", flat=True))
    how = Counter(answered.values())
    errored = sum(a.errors for a in accepters)
    summed = Counter()
    for r in reports:
        summed.update({k: v for k, v in r.items() if type(v) is int and k != "shard"})
    print(
        f"\nchaos: redis SIGKILL + AOF always: {len(attempted)} triggers from {THREADS} threads in {storm_s:.1f} s,"
        f" {KILLS} kills (each down {DOWN_S} s; at each kill: {kills}); {errored} accept calls failed while Redis was"
        f" down; {len(answered)} answered ({how.get('ACCEPTED', 0)} ACCEPTED, {how.get('DUPLICATE', 0)} DUPLICATE on"
        f" retry: landed in the AOF although the reply was lost); {len(row_ids)} rows, {sum(row_ids.values()) - len(row_ids)}"
        f" duplicates, statuses {dict(Counter(rows.values_list('status', flat=True)))}; drain tasks that finished:"
        f" {dict(summed)}; tasks failed on the outage {dict(failed_tasks)}; drained {drained_s:.1f} s after the start;"
        f" buffer {state}, {dead} dead letters"
    )

    assert len(kills) == KILLS and all(k["answered"] > 0 for k in kills) and errored > 0  # the kills hit the storm
    assert len(answered) == len(attempted) == len({s.id for s in attempted})  # every trigger answered, once
    assert set(row_ids) == set(answered)  # every answered accept is a row, and there is no other row
    assert all(n == 1 for n in row_ids.values())
    assert rows.exclude(status=RunStatus.PENDING).count() == 0  # no SYSTEM_FAILURE
    assert dead == 0 and state["queued"] == state["retry"] == state["leased"] == 0
