"""A drain worker whose Celery broker is Sentinel-managed (``CELERY_BROKER_URL=sentinel://…`` with
``CELERY_BROKER_SENTINEL_MASTER``, docs/operations.md#redis-sentinel): it consumes drain tasks through kombu's
Sentinel transport, and again after the broker's primary is SIGKILLed and its replica promoted.

Real processes: the broker's primary, replica and one sentinel (quorum 1) of the test's own, a solo-pool
``celery worker`` (tests/drainer/processes.py) with the project's settings; the buffer is the test Redis."""

from __future__ import annotations

import pytest
from celery import Celery

from buffer.buffer import Buffer
from tests.chaos.storm import Storm, envs_over_shards, rows_of_envs
from tests.drainer.processes import Cluster, settings_env, wait_until
from tests.redis_servers import sentinel_managed

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_worker_consumes_drain_tasks_through_a_sentinel_managed_broker_before_and_after_a_failover(
    tmp_path, key_prefix, mollifier_settings
):
    values = {"DRAINER_ENABLED": True, "SHARDS": 1}
    mollifier_settings(**values)
    with sentinel_managed(tmp_path / "broker", down_ms=500, service="broker") as (primary, replica, sentinel):
        broker = f"sentinel://127.0.0.1:{sentinel.port}"
        cluster = Cluster(key_prefix=key_prefix, settings_env=settings_env(values), log_dir=tmp_path)
        cluster.env.update(CELERY_BROKER_URL=broker, CELERY_BROKER_SENTINEL_MASTER="broker")
        sender = Celery("sentinel-broker-sender", broker=broker, set_as_current=False)
        sender.conf.broker_transport_options = {"master_name": "broker", "global_keyprefix": cluster.broker_prefix}
        try:
            worker = cluster.start_worker("w-sentinel")
            cluster.wait_ready(worker)
            envs = envs_over_shards(1)
            storm = Storm(Buffer.from_settings(), envs)

            storm.accept(40)
            sender.send_task("drainer.drain_shard", args=[0], queue="drain")
            wait_until(lambda: rows_of_envs(envs) == 40, timeout=30, what="40 rows drained")

            primary.kill()
            wait_until(lambda: sentinel.primary_port() == replica.port, timeout=15, what="the broker's failover")
            storm.accept(40)
            # A message sent while the worker reconnects waits in the new primary until it consumes again.
            sender.send_task("drainer.drain_shard", args=[0], queue="drain")
            wait_until(lambda: rows_of_envs(envs) == 80, timeout=60, what="80 rows drained after the failover")
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            cluster.stop()
            sender.close()
