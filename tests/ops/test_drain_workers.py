"""The drain workers' heartbeats and the steering gauges (docs/operations.md#liveness, #metrics-and-alerts): a real
drain worker beats into Redis, turns stale on the dashboard and in /metrics when it is stopped, and leaves the list
at a warm shutdown; paused and closed envs, open drain circuits and open Redis breakers are exported."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import redis
from django.urls import reverse
from redis.backoff import NoBackoff
from redis.retry import Retry

from buffer.breaker import Breaker, guarded_connection_class
from buffer.buffer import Buffer
from drainer import heartbeat
from mollifier_project.clock import now_ms as wall_clock_ms
from telemetry import collector
from tests.drainer.processes import wait_until
from tests.drainer.test_processes import start_cluster  # noqa: F401  (a fixture)
from tests.redis_servers import redis_server
from tests.sweep.test_metrics import NOW, ROOT, org_in, parse, value

DASHBOARD = "buffer_admin:dashboard"
STALE_MS = 10_000


def scrape(buffer: Buffer, *, now_ms: int = NOW, stale_ms: int = STALE_MS) -> dict:
    text = collector.exposition(
        buffer, now_ms=now_ms, stale_threshold_s=300, sweep_enabled=True, worker_stale_after_ms=stale_ms
    )
    return parse(text.decode())


@pytest.fixture
def two_shards(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=2)
    return Buffer.from_settings()


def workers_section(client) -> str:
    response = client.get(reverse(DASHBOARD))
    assert response.status_code == 200
    match = re.search(r'<div id="drain-workers">(.*?)</div>', response.content.decode(), re.S)
    assert match
    return " ".join(match.group(1).split())


# ------------------------------------------------------------------------------------------ the gauges


def test_no_heartbeat_means_no_worker_alive(two_shards):
    samples = scrape(two_shards)
    assert value(samples, "mollifier_drain_workers_alive") == 0
    assert value(samples, "mollifier_drain_workers_stale") == 0
    assert value(samples, "mollifier_drain_worker_heartbeat_age_seconds_max") == 0


def test_heartbeats_count_alive_and_stale_workers_and_the_oldest_age(two_shards):
    b = two_shards
    heartbeat.beat(b, "drain@a", now_ms=NOW - 1_000)
    heartbeat.beat(b, "drain@b", now_ms=NOW - STALE_MS)  # at the bound: still alive
    heartbeat.beat(b, "drain@c", now_ms=NOW - 45_000)

    samples = scrape(b)

    assert value(samples, "mollifier_drain_workers_alive") == 2
    assert value(samples, "mollifier_drain_workers_stale") == 1
    assert value(samples, "mollifier_drain_worker_heartbeat_age_seconds_max") == 45


def test_a_worker_unheard_of_for_an_hour_is_pruned_by_the_next_heartbeat(two_shards):
    b = two_shards
    heartbeat.beat(b, "drain@gone", now_ms=NOW - heartbeat.PRUNE_AFTER_MS - 1)
    heartbeat.beat(b, "drain@old", now_ms=NOW - heartbeat.PRUNE_AFTER_MS + 1_000)
    heartbeat.beat(b, "drain@live", now_ms=NOW)
    assert b.drain_workers() == {"drain@old": NOW - heartbeat.PRUNE_AFTER_MS + 1_000, "drain@live": NOW}


def test_paused_closed_and_open_circuits_are_exported(two_shards):
    b = two_shards
    org0, org1 = org_in(b, 0), org_in(b, 1)
    samples = scrape(b)
    names = ("mollifier_paused_orgs", "mollifier_paused_envs", "mollifier_closed_intake_envs",
             "mollifier_drain_circuits_open")  # fmt: skip
    assert [value(samples, n) for n in names] == [0, 0, 0, 0]

    b.pause(org_id=org0)
    b.pause(org_id=org0, env_id=11)
    b.pause(org_id=org1, env_id=12)
    b.close_intake(org_id=org1, env_id=12)
    b.open_circuit(1, now_ms=NOW - 1_000, base_ms=5_000, max_ms=60_000)  # open until NOW + 4 s
    b.open_circuit(0, now_ms=NOW - 10_000, base_ms=5_000, max_ms=60_000)  # lapsed at NOW - 5 s
    samples = scrape(b)

    assert [value(samples, n) for n in names] == [1, 2, 1, 1]


@pytest.mark.single_redis("SIGSTOPs a redis-server of its own")
def test_an_open_breaker_is_exported_until_redis_answers_again(tmp_path, two_shards):
    now = [100.0]
    breaker = Breaker(failures=1, open_ms=1000, clock=lambda: now[0], profile="operator")
    with redis_server(tmp_path / "redis") as server:
        client = redis.Redis.from_url(
            server.url, socket_timeout=0.2, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0),
            connection_class=guarded_connection_class(server.url, breaker),
        )  # fmt: skip
        try:
            assert client.ping()  # (the gauge is per process: another test's breaker may have left it at 1)
            server.proc.send_signal(signal.SIGSTOP)
            try:
                with pytest.raises(redis.TimeoutError):
                    client.ping()
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert breaker.state == "open"
            assert value(scrape(two_shards), "mollifier_redis_breaker_open", profile="operator") == 1
            now[0] += 1.5  # half-open: still not closed until a probe answers
            assert value(scrape(two_shards), "mollifier_redis_breaker_open", profile="operator") == 1
            assert client.ping()
            assert value(scrape(two_shards), "mollifier_redis_breaker_open", profile="operator") == 0
        finally:
            client.close()


OPEN_A_BREAKER = """
import sys
from buffer.breaker import Breaker
breaker = Breaker(failures=1, open_ms=60_000, profile="request")
breaker.failure()  # the threshold: open
assert breaker.state == "open"
print("open", flush=True)
sys.stdin.read()  # alive until the test closes stdin
"""


def test_the_breaker_gauge_counts_the_live_processes_with_an_open_breaker(two_shards, tmp_path):
    """Multiprocess mode, as under gunicorn: each process writes its breaker's state to its own file; the scrape
    sums the live ones, and a process marked dead (gunicorn's child_exit hook) counts no more."""
    from prometheus_client import multiprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")}
    env.update(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    processes = [
        subprocess.Popen([sys.executable, "-c", OPEN_A_BREAKER], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    try:
        for p in processes:
            assert p.stdout.readline().strip() == "open", p.stderr.read()

        def breakers() -> float:
            text = collector.exposition(
                two_shards, now_ms=NOW, stale_threshold_s=300, sweep_enabled=True, multiproc_dir=str(tmp_path)
            )
            return value(parse(text.decode()), "mollifier_redis_breaker_open", profile="request")

        assert breakers() == 2
        multiprocess.mark_process_dead(processes[0].pid, str(tmp_path))
        assert breakers() == 1
    finally:
        for p in processes:
            p.communicate(input="", timeout=30)


# ---------------------------------------------------------------------------------------- the dashboard


@pytest.mark.django_db
def test_the_dashboard_lists_drain_workers_and_flags_the_stale_ones(admin_client, two_shards, mollifier_settings):
    mollifier_settings(SHARDS=2, DRAIN_TIME_BUDGET_MS=2_000)  # stale after 3 beats + 2 budgets = 10 s
    now = wall_clock_ms()
    assert "<strong>none</strong> has beaten" in workers_section(admin_client)
    heartbeat.beat(two_shards, "drain@<b>host</b>", now_ms=now - 1_000)
    heartbeat.beat(two_shards, "drain@frozen", now_ms=now - 125_000)

    section = workers_section(admin_client)
    page = admin_client.get(reverse(DASHBOARD)).content.decode()

    assert "<strong>drain@&lt;b&gt;host&lt;/b&gt;</strong> beat 1 s ago" in section  # escaped; not flagged
    assert (
        '<span class="drain-worker stale"><strong>drain@frozen</strong> beat 2 min 5 s ago (<strong>stale</strong>)'
        in section
    )
    assert "1 drain worker stopped beating without shutting down: drain@frozen" in page


# ------------------------------------------------------------------------------------ a real worker


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_real_drain_worker_beats_turns_stale_when_stopped_and_leaves_at_shutdown(
    start_cluster,  # noqa: F811
    admin_client,
):
    """A worker of the drain queue beats every 2 s from its own loop; one of another queue never does. SIGSTOPped,
    the drain worker is past the bound (3 beats + 2 × 0.5 s budgets = 7 s) in /metrics and on the dashboard; after
    SIGCONT it is alive again; a warm shutdown removes it from the list."""
    cluster, buffer = start_cluster(SHARDS=1, DRAIN_TIME_BUDGET_MS=500)
    stale_ms = heartbeat.stale_after_ms(500)
    assert stale_ms == 7_000
    drain, other = cluster.start_worker("w1"), cluster.start_worker("w2", queues="elsewhere")
    cluster.wait_ready(drain, other)

    def alive(scraped_at: int | None = None) -> float:
        return value(
            scrape(buffer, now_ms=scraped_at or wall_clock_ms(), stale_ms=stale_ms), "mollifier_drain_workers_alive"
        )

    wait_until(lambda: "w1@drain-test" in buffer.drain_workers(), timeout=30, what="w1's first heartbeat")
    first = buffer.drain_workers()["w1@drain-test"]
    wait_until(lambda: buffer.drain_workers()["w1@drain-test"] > first, timeout=10, what="w1's next heartbeat")
    assert set(buffer.drain_workers()) == {"w1@drain-test"}  # w2 consumes no drain queue
    assert alive() == 1

    os.kill(drain.pid, signal.SIGSTOP)
    try:
        last = buffer.drain_workers()["w1@drain-test"]
        wait_until(lambda: wall_clock_ms() - last > stale_ms + 500, timeout=15, interval=0.2, what="the bound to pass")
        assert buffer.drain_workers()["w1@drain-test"] == last  # a stopped loop does not beat
        samples = scrape(buffer, now_ms=wall_clock_ms(), stale_ms=stale_ms)
        assert value(samples, "mollifier_drain_workers_alive") == 0
        assert value(samples, "mollifier_drain_workers_stale") == 1
        assert "w1@drain-test</strong> beat" in (section := workers_section(admin_client)) and "stale" in section
    finally:
        os.kill(drain.pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_until(lambda: alive() == 1, timeout=15, interval=0.2, what="w1 to beat again after SIGCONT")
    print(
        f"heartbeat: alive again {time.monotonic() - resumed:.1f} s after SIGCONT (beats every {heartbeat.INTERVAL_S} s)"
    )

    cluster.retire(drain)  # warm shutdown

    assert "w1@drain-test" not in buffer.drain_workers()
    assert alive() == 0
