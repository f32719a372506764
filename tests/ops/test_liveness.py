"""Honest liveness (docs/operations.md#liveness): a stopped drain worker turns the dashboard's verdict "stuck"
within the stated bound, and back once it resumes; the liveness gauges read what the drain and the fan-out
recorded in real Redis."""

from __future__ import annotations

import math
import os
import re
import signal
import time

import pytest
from django.urls import reverse

from drainer import tasks
from mollifier_project.clock import now_ms as wall_clock_ms
from sweep import dashboard
from sweep.admin.views import stuck_after_ms
from tests.drainer.processes import Producer, wait_until
from tests.drainer.test_processes import park, start_cluster  # noqa: F401  (start_cluster: a fixture)
from tests.factories import EnvironmentFactory, SnapshotFactory
from tests.sweep.test_metrics import NOW, accept, org_in, scrape, value

DASHBOARD = "buffer_admin:dashboard"


def verdict_of(client) -> str:
    response = client.get(reverse(DASHBOARD))
    assert response.status_code == 200
    match = re.search(r'id="verdict">\s*<strong>([^<]*)</strong>', response.content.decode())
    assert match, response.content.decode()[:2000]
    return match.group(1)


# ---------------------------------------------------------------------------------------- the gauges


@pytest.fixture
def two_shards(key_prefix, mollifier_settings):
    from buffer.buffer import Buffer

    mollifier_settings(SHARDS=2)
    return Buffer.from_settings()


def test_last_progress_age_is_zero_when_no_work_is_due(two_shards):
    b = two_shards
    b.count_drained(0, 3, now_ms=NOW - 3_600_000)  # progress an hour ago, nothing waiting since
    assert value(scrape(b), "mollifier_drain_last_progress_age_seconds") == 0


def test_last_progress_age_is_the_worst_shard_with_work_due(two_shards):
    b = two_shards
    for shard, progress_ago_ms in ((0, 30_000), (1, 5_000)):
        accept(b, org_in(b, shard), 10 + shard, now_ms=NOW - 60_000, run_id=f"run_due_{shard}")
        b.count_drained(shard, 1, now_ms=NOW - progress_ago_ms)
    assert value(scrape(b), "mollifier_drain_last_progress_age_seconds") == 30


def test_a_count_of_zero_records_no_progress_and_progress_never_goes_back(two_shards):
    b = two_shards
    accept(b, org_in(b, 0), 10, now_ms=NOW - 60_000, run_id="run_due")
    b.count_drained(0, 0, now_ms=NOW - 1_000)  # nothing left the buffer: no progress
    assert value(scrape(b), "mollifier_drain_last_progress_age_seconds") == 60  # since the entry arrived
    b.count_drained(0, 1, now_ms=NOW - 10_000)
    b.count_drained(0, 1, now_ms=NOW - 20_000)  # a late round with an older clock
    assert value(scrape(b), "mollifier_drain_last_progress_age_seconds") == 10


def test_fan_out_tick_age_is_infinite_until_the_fan_out_ticks(two_shards, mollifier_settings):
    b = two_shards
    assert math.isinf(value(scrape(b), "mollifier_fan_out_last_tick_age_seconds"))
    mollifier_settings(SHARDS=2, DRAINER_ENABLED=False)  # ticks while the drainer is off too: beat runs
    before = wall_clock_ms()
    tasks.fan_out()
    tick = b.fan_out_last_tick_ms()
    assert tick is not None and before <= tick <= wall_clock_ms()
    assert value(scrape(b, now_ms=tick + 7_000), "mollifier_fan_out_last_tick_age_seconds") == 7


# ------------------------------------------------------------------------------------ a stopped worker


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_stopped_drain_worker_turns_the_verdict_stuck_within_the_bound_and_back_after_it_resumes(
    start_cluster,  # noqa: F811
    admin_client,
):
    """A worker and beat drain a steady trickle; the worker is SIGSTOPped. With a 0.5 s tick and a 1 s budget the
    bound is a send's 10 s expiry + 1 s = 11 s; the verdict must say "stuck" (naming the shard) by the bound plus
    a 10 s margin for a loaded 2-core box and the 0.5 s polling, and flow again within 30 s of SIGCONT (the
    stopped worker's lock and leases expire within 2.5 s, its queued tasks may have expired)."""
    cluster, buffer = start_cluster(SHARDS=1, DRAIN_INTERVAL_S=0.5, ROUND_BUDGET=50)
    bound_ms = stuck_after_ms()
    assert bound_ms == dashboard.stuck_bound_ms(tasks.send_expiry_s(0.5, time_budget_ms=1000), 1000) == 11_000
    env = EnvironmentFactory()
    worker, beat = cluster.start_worker("w1"), cluster.start_beat()
    cluster.wait_ready(worker, beat)
    producer = Producer(lambda n: park(buffer, [SnapshotFactory(env=env) for _ in range(n)]), per_second=20)
    producer.start()
    try:
        wait_until(lambda: buffer.shard_stats(now_ms=wall_clock_ms())[0].last_progress_ms, timeout=30,
                   what="a first drain progress")  # fmt: skip
        before = verdict_of(admin_client)
        assert not before.startswith("stuck"), before

        os.kill(worker.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            verdict = wait_until(
                lambda: (v := verdict_of(admin_client)).startswith("stuck") and v,
                timeout=(bound_ms + 10_000) / 1000, interval=0.5, what="a stuck verdict",
            )  # fmt: skip
            to_stuck_s = time.monotonic() - stopped
            samples = scrape(buffer, now_ms=wall_clock_ms())
            # The gauges say the same as the page: the shard's last progress is past the bound, and the fan-out
            # (beat's task, run by a worker of the drain queue: here the stopped one) has not ticked since either.
            assert value(samples, "mollifier_drain_last_progress_age_seconds") >= bound_ms / 1000
            assert value(samples, "mollifier_fan_out_last_tick_age_seconds") >= bound_ms / 1000 - 2
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        resumed = time.monotonic()
        wait_until(lambda: not verdict_of(admin_client).startswith("stuck"), timeout=30, interval=0.5,
                   what="the verdict to leave stuck")  # fmt: skip
        to_flowing_s = time.monotonic() - resumed
    finally:
        producer.stop()
    print(f"liveness: SIGSTOP → stuck in {to_stuck_s:.1f} s (bound {bound_ms / 1000:.0f} s); SIGCONT → not stuck"
          f" in {to_flowing_s:.1f} s; verdict: {verdict}")  # fmt: skip
    assert "no drain progress on shard 0" in verdict
    assert to_stuck_s >= bound_ms / 1000 - 2  # not before the bound (2 s: the last progress may predate the stop)
