"""Chaos: the buffer's Redis, without AOF, SIGKILLed and restarted empty under 200 answered runs while a real
Celery worker and beat run the drain (docs/architecture.md#buffer-epoch).

The runs' orgs are paused, so they stay buffered as they would behind a backlog. The worker's fan-out ticks
record the epochs. After the crash, a tick in the worker process finds them gone. The worker logs the ERROR,
Postgres gets one ``BufferDataLoss`` row, and this process's ``/metrics`` reports it. Later ticks record
nothing more.
"""

from __future__ import annotations

import time

import pytest

from buffer import client as buffer_module
from buffer.models import BufferDataLoss, BufferEpoch
from buffer.values import AcceptStatus
from runs.snapshot import to_snapshot
from tests.chaos.storm import envs_over_shards
from tests.drainer.processes import broker_url, wait_until
from tests.factories import SnapshotFactory
from tests.redis_servers import RedisServer
from tests.sweep.test_metrics import parse

SHARDS = 2
RUNS = 200
TICK_S = 0.3


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_notices_a_redis_that_restarted_empty_and_records_it_once(
    start_cluster, settings, tmp_path, monkeypatch, client
):
    monkeypatch.setenv("DRAIN_TEST_BROKER_URL", broker_url())  # the broker stays on the shared Redis
    server = RedisServer(tmp_path / "buffer-redis", "--appendonly", "no").start()
    settings.REDIS_URL = server.url
    try:
        cluster, buffer = start_cluster(SHARDS=SHARDS, DRAIN_INTERVAL_S=TICK_S)
        envs = envs_over_shards(SHARDS)
        for env in envs:
            buffer.pause(org_id=env.org_id)  # accepted and counted, never leased: they stay buffered
        for i in range(RUNS):
            s = SnapshotFactory(env=envs[i % SHARDS])
            result = buffer.accept(run_id=s.id, env_id=s.env_id, org_id=s.org_id, snapshot=to_snapshot(s),
                                   now_ms=int(time.time() * 1000), idempotency=None, max_per_env=1_000)  # fmt: skip
            assert result.status is AcceptStatus.ACCEPTED
        worker, beat = cluster.start_worker("w1"), cluster.start_beat()
        cluster.wait_ready(worker, beat)
        wait_until(lambda: BufferEpoch.objects.filter(prefix=buffer.prefix).count() == SHARDS, timeout=20,
                   what="the worker's first tick to record the epochs")  # fmt: skip
        assert not BufferDataLoss.objects.exists()  # a first start on an empty Redis: no alarm
        assert sum(s.depth for s in buffer.shard_stats(now_ms=0)) == RUNS

        server.kill()
        killed = time.monotonic()
        time.sleep(1.0)
        server.start()  # same port and data directory, nothing on disk: empty
        loss = wait_until(lambda: BufferDataLoss.objects.first(), timeout=30, what="the worker to record the loss")
        detected_s = time.monotonic() - killed
        time.sleep(10 * TICK_S)  # ten more ticks
        losses = BufferDataLoss.objects.count()
        lines = [line for line in worker.log.read_text(errors="replace").splitlines() if "buffer data loss" in line]
        samples = parse(client.get("/metrics").content.decode())
    finally:
        server.stop()
        buffer_module._clients.pop(server.url, None)  # this process's client of a server that is gone

    print(f"\nchaos: redis without AOF SIGKILLed under {RUNS} buffered runs; loss recorded {detected_s:.1f} s after"
          f" the kill (1 s down, {TICK_S} s ticks); {losses} loss row(s); {len(lines)} ERROR line(s)")  # fmt: skip
    assert losses == 1 and loss.shards == list(range(SHARDS))
    assert len(lines) == 1 and '"level": "ERROR"' in lines[0] and '"logger": "drainer.epochs"' in lines[0], lines
    assert samples["mollifier_buffer_data_losses_unacknowledged"][()] == 1
    assert samples["mollifier_buffer_depth"][()] == 0
