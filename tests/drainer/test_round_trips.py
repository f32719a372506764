"""What a drain round costs in Redis round trips (docs/operations.md#round-trips).

Round trips are what a real network makes a drain pay for: at 2 ms between the worker and Redis each one is
2 ms of a round. The buffer's Redis traffic goes through ``scripts/netproxy.py`` on loopback (no added delay),
which counts the chunks a client sends upstream: one per round trip, a pipeline being one.

A round used to cost nine: Redis's clock (TIME), the circuit (HGET), reclaim, promote, candidates, the lease
(two when it is a pipeline: redis-py asked SCRIPT EXISTS first), the ack and the drain-rate count. Now the
clock is read once a second, the circuit once a task, reclaim, promote and candidates share one pipeline and
no pipeline asks SCRIPT EXISTS (``buffer.script_pipeline``): four a round, plus two a task.
"""

from __future__ import annotations

import time

import pytest
import redis
from django.conf import settings

from buffer.buffer import Buffer
from buffer.drain_side import CLOCK_REREAD_MS
from buffer.scripts import Scripts
from drainer import drain
from drainer.limits import DrainLimits
from tests.factories import EnvironmentFactory, SnapshotFactory
from tests.round_trips import counted_client

pytestmark = pytest.mark.single_redis("puts a proxy in front of one redis-server")

ROUNDS = 5
PER_ROUND = 10


@pytest.fixture
def counted(key_prefix, buffer):
    """(Buffer whose Redis traffic the proxy carries, a function returning the round trips so far); the
    ``buffer`` fixture's settings (one shard, drainer on)."""
    with counted_client() as (client, flights):
        cfg = settings.MOLLIFIER
        yield Buffer(client, prefix=cfg.KEY_PREFIX, shards=cfg.SHARDS, scripts=Scripts.register(client)), flights


@pytest.mark.django_db
def test_a_drain_round_costs_four_redis_round_trips(mollifier_settings, park, counted):
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True, ROUND_BUDGET=PER_ROUND)
    buffer, flights = counted
    env = EnvironmentFactory()
    ids = park(*[SnapshotFactory(env=env) for _ in range(ROUNDS * PER_ROUND)])

    before = flights()
    report = drain.drain_shard(
        buffer, shard=0, limits=DrainLimits.from_settings(settings.MOLLIFIER), clock=buffer.server_time_ms
    )
    used = flights() - before

    assert (report.created, report.rounds) == (len(ids), ROUNDS), report
    print(f"\nround trips: {used} for a drain of {report.rounds} rounds")
    # Before: 8 a round here (one env: its lease is a single call), 40. After: 4 a round + 2 a task (22); one
    # more TIME per second the drain took.
    assert used <= 4 * ROUNDS + 2 + 2, used


def test_the_drain_clock_reads_redis_once_a_second_and_never_goes_back(counted):
    buffer, flights = counted
    truth = redis.Redis.from_url(settings.REDIS_URL)

    def redis_ms() -> int:
        seconds, micros = truth.time()
        return int(seconds) * 1000 + int(micros) // 1000

    before = flights()
    low = redis_ms()
    readings = [buffer.server_time_ms() for _ in range(200)]
    high = redis_ms()
    assert flights() - before == 1  # before: one TIME per call (200)
    assert readings == sorted(readings)
    assert low - 5 <= readings[0] and readings[-1] <= high + 5  # Redis's clock, not this process's

    time.sleep(CLOCK_REREAD_MS / 1000 + 0.05)
    low = redis_ms()
    later = buffer.server_time_ms()  # read again: the reading has aged out
    high = redis_ms()
    assert flights() - before == 2
    assert low - 5 <= later <= high + 5 and later >= readings[-1]
    truth.close()
