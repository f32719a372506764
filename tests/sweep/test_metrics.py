"""/metrics (docs/architecture.md#telemetry): the exposition parses, labels are bounded, gauges are Redis' numbers, counters add
up across processes, and the optional bearer token guards it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from django.conf import settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from buffer import gate
from buffer.buffer import Buffer
from buffer.client import CLIENT_OPTIONS
from buffer.values import Entry, EntryStatus
from drainer import drain
from drainer import telemetry as drain_telemetry
from drainer.limits import DrainLimits
from runs.models import TaskRun
from runs.snapshot import to_snapshot
from telemetry import collector
from tests.factories import EnvironmentFactory, SnapshotFactory

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_000_000_000  # a multiple of the 10 s bucket
# "le": histogram buckets; "shard": 0 … SHARDS-1; "node": host:port of each master of the buffer's Redis (memory gauges); "profile": the breaker's client (request | operator)
ALLOWED_LABELS = {"outcome", "reason", "result", "le", "shard", "node", "profile"}
GAUGES = {
    "mollifier_buffer_depth", "mollifier_buffer_leased", "mollifier_buffer_expired_leases", "mollifier_buffer_dead",
    "mollifier_buffer_oldest_age_seconds", "mollifier_stale_entries", "mollifier_stale_threshold_seconds",
    "mollifier_drain_rate_per_second", "mollifier_drain_eta_seconds", "mollifier_redis_up",
    "mollifier_drain_eta_seconds_max", "mollifier_shard_drain_rate_per_second", "mollifier_shard_drain_eta_seconds",
}  # fmt: skip


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} — parsing fails loudly on a malformed exposition."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def scrape(buffer: Buffer, *, now_ms: int = NOW, multiproc_dir: str = "", sweep_enabled: bool = True) -> dict:
    text = collector.exposition(
        buffer, now_ms=now_ms, stale_threshold_s=300, sweep_enabled=sweep_enabled, multiproc_dir=multiproc_dir
    ).decode()
    return parse(text)


def accept(buffer: Buffer, org: int, env: int, *, now_ms: int, run_id: str) -> None:
    result = buffer.accept(
        run_id=run_id, env_id=env, org_id=org, snapshot="{}", now_ms=now_ms, idempotency=None, max_per_env=100
    )
    assert result.status == "ACCEPTED"


@pytest.fixture
def two_shards(key_prefix, mollifier_settings) -> Buffer:
    mollifier_settings(SHARDS=2, STALE_SWEEP_ENABLED=True)
    return Buffer.from_settings()


def org_in(buffer: Buffer, shard: int, start: int = 1) -> int:
    return next(org for org in range(start, 1000) if buffer.shard_for(org) == shard)


# ------------------------------------------------------------------------------------------ the view


@pytest.mark.django_db
def test_metrics_endpoint_serves_a_parsable_exposition(client, key_prefix):
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = parse(response.content.decode())
    assert GAUGES <= set(samples)
    assert value(samples, "mollifier_redis_up") == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer wrong", 401), ("Basic s3cret-token", 401), ("Bearer s3cret-token", 200)],
)
def test_metrics_token_is_required_once_configured(client, key_prefix, mollifier_settings, header, status):
    mollifier_settings(METRICS_TOKEN=SecretStr("s3cret-token"))
    headers = {"Authorization": header} if header else {}

    response = client.get("/metrics", headers=headers)

    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"mollifier_" not in response.content


def test_metrics_token_setting_comes_from_the_environment():
    from mollifier_project.config import load_settings

    assert load_settings({"MOLLIFIER_METRICS_TOKEN": "abc"}).METRICS_TOKEN.get_secret_value() == "abc"
    assert "abc" not in repr(load_settings({"MOLLIFIER_METRICS_TOKEN": "abc"}))


# ------------------------------------------------------------------------------------------ labels


@pytest.mark.django_db
def test_labels_are_from_an_allow_list_and_never_carry_tenant_ids(buffer_with_activity):
    org, env = buffer_with_activity

    samples = scrape(Buffer.from_settings())

    mollifier = {name: series for name, series in samples.items() if name.startswith("mollifier_")}
    assert {"mollifier_decisions_total", "mollifier_accepted_total", "mollifier_drained_total"} <= set(mollifier)
    assert {"mollifier_dwell_seconds_count", "mollifier_reclaimed_total"} <= set(mollifier)
    label_names = {name for series in mollifier.values() for labels in series for name, _ in labels}
    assert label_names <= ALLOWED_LABELS
    label_values = {v for series in mollifier.values() for labels in series for _, v in labels}
    assert not {str(org), str(env)} & label_values


@pytest.fixture
def buffer_with_activity(key_prefix, mollifier_settings, settings):
    """Gate decisions, accepts and a drain for one tenant with distinctive ids."""
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True, ENABLED=True, TRIP_THRESHOLD=0)
    buffer = Buffer.from_settings()
    env = EnvironmentFactory()
    gate.evaluate(buffer, org_id=env.org_id, env_id=env.id, enrolled=True, bypass=False, now_ms=NOW,
                  cfg=settings.MOLLIFIER)  # fmt: skip
    snap = SnapshotFactory(env=env)
    buffer.accept(run_id=snap.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(snap),
                  now_ms=NOW, idempotency=None, max_per_env=10)  # fmt: skip
    drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(settings.MOLLIFIER))
    return env.org_id, env.id


# ------------------------------------------------------------------------------------------ gauges


def test_gauges_match_what_is_in_redis(two_shards):
    b = two_shards
    a, z = org_in(b, 0), org_in(b, 1)
    for i in range(3):
        accept(b, a, 10, now_ms=NOW - 50_000, run_id=f"run_a10_{i}")
    accept(b, a, 11, now_ms=NOW - 20_000, run_id="run_a11")
    for i in range(4):
        accept(b, z, 20, now_ms=NOW - 30_000 + i, run_id=f"run_z20_{i}")
    b.lease(1, org_id=z, env_id=20, n=1, now_ms=NOW - 10_000, lease_ms=1_000)  # expired lease
    b.lease(1, org_id=z, env_id=20, n=2, now_ms=NOW - 10_000, lease_ms=60_000)  # two live leases
    b.requeue(1, "run_z20_1", now_ms=NOW - 5_000, delay_ms=60_000, error="deadlock")  # one retrying
    b.dead_letter(1, "run_z20_2", now_ms=NOW - 4_000, reason="env deleted")  # one dead
    b._client.hset(b.keys(0).sweep_counts, mapping={"10": 3})
    b._client.hset(b.keys(1).sweep_counts, mapping={"20": 1, "21": 2})
    b._client.set(b.keys(0).drained(NOW - 30_000), 35)  # in the window …
    b._client.set(b.keys(1).drained(NOW), 5)  # … the current bucket too
    b._client.set(b.keys(1).drained(NOW - 80_000), 1000)  # … but not this one

    samples = scrape(b)

    # queued: 3 + 1 (shard 0) + 1 (shard 1: run_z20_3) ; retrying: 1 ; leased: run_z20_0 (expired) + none else
    assert value(samples, "mollifier_buffer_depth") == 3 + 1 + 1 + 1
    assert value(samples, "mollifier_buffer_leased") == 1
    assert value(samples, "mollifier_buffer_expired_leases") == 1
    assert value(samples, "mollifier_buffer_dead") == 1
    assert value(samples, "mollifier_buffer_oldest_age_seconds") == 50
    assert value(samples, "mollifier_stale_entries") == 3 + 1 + 2
    assert value(samples, "mollifier_stale_threshold_seconds") == 300
    rate = (35 + 5) / 60  # the window is the last minute plus the (just started) current bucket
    assert value(samples, "mollifier_drain_rate_per_second") == pytest.approx(rate)
    recent = 5 / 10  # the ETAs read the last full bucket (empty here) and the current one: 10 s at NOW
    assert value(samples, "mollifier_drain_eta_seconds") == pytest.approx((6 + 1) / recent)


def test_stale_gauge_reads_zero_while_the_sweep_is_off(two_shards):
    two_shards._client.hset(two_shards.keys(0).sweep_counts, mapping={"10": 3})

    assert value(scrape(two_shards, sweep_enabled=False), "mollifier_stale_entries") == 0


def test_drain_eta_is_zero_when_empty_and_infinite_when_nothing_drains(two_shards):
    assert value(scrape(two_shards), "mollifier_drain_eta_seconds") == 0
    accept(two_shards, 1, 10, now_ms=NOW, run_id="run_x")
    assert math.isinf(value(scrape(two_shards), "mollifier_drain_eta_seconds"))


def test_unreachable_redis_leaves_the_gauges_out_but_still_answers():
    down = Buffer(
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, **CLIENT_OPTIONS,
                    retry=Retry(NoBackoff(), 0)),
        prefix="x", shards=1,
    )  # fmt: skip

    samples = scrape(down)

    assert value(samples, "mollifier_redis_up") == 0
    assert "mollifier_buffer_depth" not in samples


# ------------------------------------------------------------------------------------------ counters


@pytest.mark.django_db
def test_a_drain_counts_outcomes_dwell_and_its_rate(key_prefix, mollifier_settings, settings):
    mollifier_settings(SHARDS=1, DRAINER_ENABLED=True)
    buffer = Buffer.from_settings()
    env = EnvironmentFactory()
    snaps = [SnapshotFactory(env=env) for _ in range(3)]
    for snap in snaps:
        buffer.accept(run_id=snap.id, env_id=env.id, org_id=env.org_id, snapshot=to_snapshot(snap),
                      now_ms=NOW - 4_000, idempotency=None, max_per_env=10)  # fmt: skip

    def sample(name, **labels):
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (sample("mollifier_drained_total", outcome="created"), sample("mollifier_dwell_seconds_count"),
              sample("mollifier_dwell_seconds_bucket", le="5.0"), sample("mollifier_dwell_seconds_bucket", le="2.5"))  # fmt: skip
    drain.drain_shard(buffer, shard=0, limits=DrainLimits.from_settings(settings.MOLLIFIER), clock=lambda: NOW)
    after = (sample("mollifier_drained_total", outcome="created"), sample("mollifier_dwell_seconds_count"),
             sample("mollifier_dwell_seconds_bucket", le="5.0"), sample("mollifier_dwell_seconds_bucket", le="2.5"))  # fmt: skip

    assert TaskRun.objects.filter(env=env).count() == 3
    assert [x - y for x, y in zip(after, before, strict=True)] == [3, 3, 3, 0]  # dwell 4 s each
    assert buffer._client.get(buffer.keys(0).drained(NOW)) == "3"
    assert value(scrape(buffer), "mollifier_drain_rate_per_second") == pytest.approx(3 / 60)


RECORD_IN_A_PROCESS = """
import django; django.setup()
from buffer import gate
from buffer.buffer import Buffer
from buffer.values import Entry, EntryStatus
from drainer import telemetry as drain_telemetry
from drainer.drain import Report
n, now = {n}, {now}
entries = [Entry(run_id=f"run_{{i}}", env_id=1, org_id=1, status=EntryStatus.LEASED, snapshot="{{}}", attempts=0,
                 accepted_ms=now - 2_000) for i in range(n)]
drain_telemetry.record_round(Buffer.from_settings(), shard=0, report=Report(leased=n, created=n), entries=entries,
                       acked=[e.run_id for e in entries], now_ms=now)
gate.count_fail_open()
"""


@pytest.mark.django_db
def test_counts_add_up_across_two_worker_processes(client, key_prefix, mollifier_settings, tmp_path):
    mollifier_settings(SHARDS=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOLLIFIER_")}
    env.update(
        DJANGO_SETTINGS_MODULE="mollifier_project.settings", PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
        REDIS_URL=settings.REDIS_URL, MOLLIFIER_KEY_PREFIX=key_prefix, MOLLIFIER_SHARDS="1", LOG_LEVEL="ERROR",
    )  # fmt: skip
    workers = [
        subprocess.Popen([sys.executable, "-c", RECORD_IN_A_PROCESS.format(n=n, now=NOW)], cwd=ROOT, env=env,
                         stderr=subprocess.PIPE, text=True)
        for n in (3, 4)
    ]  # fmt: skip
    for worker in workers:
        _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr
    assert len(list(tmp_path.glob("counter_*.db"))) == 2  # one file per process

    samples = scrape(Buffer.from_settings(), multiproc_dir=str(tmp_path))

    assert value(samples, "mollifier_drained_total", outcome="created") == 7
    assert value(samples, "mollifier_dwell_seconds_count") == 7
    assert value(samples, "mollifier_dwell_seconds_bucket", le="2.5") == 7
    assert value(samples, "mollifier_fail_open_total") == 2
    assert value(samples, "mollifier_drain_rate_per_second") == pytest.approx(7 / 60)
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)  # the view reads the same files
    response = client.get("/metrics")
    assert value(parse(response.content.decode()), "mollifier_drained_total", outcome="created") == 7


def test_record_round_ignores_a_redis_failure(caplog):
    down = Buffer(
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, **CLIENT_OPTIONS,
                    retry=Retry(NoBackoff(), 0)),
        prefix="x", shards=1,
    )  # fmt: skip
    entry = Entry(run_id="run_1", env_id=1, org_id=1, status=EntryStatus.LEASED, snapshot="{}", attempts=0,
                  accepted_ms=NOW)  # fmt: skip

    drain_telemetry.record_round(down, shard=0, report=drain.Report(leased=1, created=1), entries=[entry],
                           acked=["run_1"], now_ms=NOW)  # fmt: skip

    assert "could not record the drain rate" in caplog.text
