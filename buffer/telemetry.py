"""Telemetry of the buffer (DESIGN §12): what the drain records per round, and what ``/metrics`` shows.

Two kinds of numbers, kept apart on purpose:

* **Counters and histograms** (``buffer.metrics``) are incremented where things happen — the gate, accept,
  the drain (``record_round``, once per round). Under gunicorn and Celery they live in many processes, so
  they run in prometheus-client's multiprocess mode: each process writes its values to files in
  ``PROMETHEUS_MULTIPROC_DIR`` and the scrape sums them (README "Metrics").
* **Gauges** are read from Redis at scrape time (``BufferCollector``): depth, oldest age, leased, dead,
  stale total, drain rate and ETA. Redis is the truth shared by every process, so any web worker answers
  the same; a per-process gauge would be wrong the moment a second worker exists.

No label carries an env or org id (the series count would grow with the tenants); per-tenant detail goes
to the JSON logs (``record_round`` logs one line per drained env) and the admin.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from buffer import metrics

if TYPE_CHECKING:
    from buffer.buffer import Buffer, Entry

log = logging.getLogger(__name__)

BUCKET_MS = 10_000  # drained-entry counts are kept per 10 s bucket and shard …
RATE_WINDOW_MS = 60_000  # … and the drain rate is averaged over the last minute plus the current bucket
BUCKET_TTL_MS = RATE_WINDOW_MS + 2 * BUCKET_MS


# ------------------------------------------------------------------------------------ drain side


def record_round(
    buffer: Buffer, *, shard: int, report: Any, entries: Sequence[Entry], acked: Sequence[str], now_ms: int
) -> None:
    """Count one drain round: outcomes, dwell of the acked entries, the shard's drain-rate bucket, and one
    JSON log line per env that had entries leave the buffer.

    ``report`` is the round's ``drainer.drain.Report``. Called after the ack, so it must never change the
    drain's result: a Redis error while writing the rate bucket is logged, not raised.
    """
    for outcome in ("created", "existed", "cancelled", "failed", "dead", "requeued", "released"):
        count = getattr(report, outcome)
        if count:
            metrics.DRAINED.labels(outcome=outcome).inc(count)
    acked_ids = set(acked)
    per_env: dict[tuple[int, int], list[int]] = defaultdict(list)
    for entry in entries:
        if entry.run_id in acked_ids:
            dwell_ms = max(0, now_ms - entry.accepted_ms)
            metrics.DWELL.observe(dwell_ms / 1000)
            per_env[(entry.org_id, entry.env_id)].append(dwell_ms)
    left = len(acked_ids) + report.dead
    if left:
        _count_drained(buffer, shard, left, now_ms)
    for (org_id, env_id), dwells in per_env.items():
        log.info(
            "drained %s entries of env %s", len(dwells), env_id,
            extra={"shard": shard, "org_id": org_id, "env_id": env_id, "drained": len(dwells),
                   "max_dwell_ms": max(dwells)},
        )  # fmt: skip


def _count_drained(buffer: Buffer, shard: int, count: int, now_ms: int) -> None:
    key = buffer.keys(shard).drained(now_ms - now_ms % BUCKET_MS)
    try:
        pipe = buffer.client.pipeline(transaction=False)
        pipe.incrby(key, count)
        pipe.pexpire(key, BUCKET_TTL_MS)
        pipe.execute()
    except redis.RedisError:
        log.warning("could not record the drain rate of shard %s", shard, extra={"shard": shard}, exc_info=True)


# ------------------------------------------------------------------------------------ scrape side


@dataclass(frozen=True, slots=True)
class ShardStats:
    """One shard as ``lua/shard_stats.lua`` sees it, plus its drain rate."""

    shard: int
    queued: int  # in env queues
    retrying: int  # waiting out a backoff
    leased: int  # in flight, including expired leases
    expired_leases: int
    dead: int
    oldest_accepted_ms: int | None  # oldest queue head
    stale: int  # sum of the sweep's counts hash
    drained_per_s: float  # entries that left the buffer per second, over the rate window

    @property
    def depth(self) -> int:
        """Entries waiting to be leased (queued or retrying)."""
        return self.queued + self.retrying


def read_shard_stats(buffer: Buffer, *, now_ms: int) -> list[ShardStats]:
    """Every shard's numbers in one pipelined round trip (a ``shard_stats`` call and the rate buckets per shard)."""
    first_bucket = now_ms - now_ms % BUCKET_MS - RATE_WINDOW_MS
    buckets = range(first_bucket, now_ms + 1, BUCKET_MS)
    window_s = (now_ms - first_bucket) / 1000
    pipe = buffer.client.pipeline(transaction=False)
    for shard in range(buffer.shards):
        k = buffer.keys(shard)
        buffer.scripts.shard_stats(
            keys=[k.orgs, k.leases, k.retry, k.dead, k.sweep_counts], args=[k.base, now_ms], client=pipe
        )
        pipe.mget([k.drained(bucket) for bucket in buckets])
    replies = pipe.execute()
    stats = []
    for shard in range(buffer.shards):
        queued, retrying, leased, expired, dead, oldest, stale = (int(v) for v in replies[2 * shard])
        drained = sum(int(v) for v in replies[2 * shard + 1] if v)
        stats.append(
            ShardStats(
                shard=shard,
                queued=queued,
                retrying=retrying,
                leased=leased,
                expired_leases=expired,
                dead=dead,
                oldest_accepted_ms=None if oldest < 0 else oldest,
                stale=stale,
                drained_per_s=drained / window_s,
            )
        )
    return stats


def drain_eta_s(backlog: int, drained_per_s: float) -> float:
    """Seconds to drain ``backlog`` at the recent rate: 0 when empty, +Inf when nothing drains (alertable)."""
    if backlog <= 0:
        return 0.0
    return backlog / drained_per_s if drained_per_s > 0 else math.inf


class BufferCollector:
    """Gauges computed from Redis when scraped. Without Redis only ``mollifier_redis_up 0`` is reported."""

    def __init__(self, buffer: Buffer, *, now_ms: int, stale_threshold_s: int, sweep_enabled: bool) -> None:
        self.buffer = buffer
        self.now_ms = now_ms
        self.stale_threshold_s = stale_threshold_s
        self.sweep_enabled = sweep_enabled

    def collect(self) -> Iterator[Metric]:
        threshold = GaugeMetricFamily(
            "mollifier_stale_threshold_seconds", "Age above which a queued entry is stale (STALE_THRESHOLD_S)."
        )
        threshold.add_metric([], self.stale_threshold_s)
        yield threshold
        try:
            stats = read_shard_stats(self.buffer, now_ms=self.now_ms)
        except redis.RedisError:
            log.warning("metrics: Redis unreachable, buffer gauges left out", exc_info=True)
            yield _gauge("mollifier_redis_up", "1 if the buffer's Redis answered this scrape.", 0)
            return
        yield _gauge("mollifier_redis_up", "1 if the buffer's Redis answered this scrape.", 1)
        depth = sum(s.depth for s in stats)
        leased = sum(s.leased for s in stats)
        rate = sum(s.drained_per_s for s in stats)
        oldest = min((s.oldest_accepted_ms for s in stats if s.oldest_accepted_ms is not None), default=None)
        yield _gauge("mollifier_buffer_depth", "Entries waiting to be drained (queued or retrying).", depth)
        yield _gauge("mollifier_buffer_leased", "Entries in flight (leased by a drainer), incl. expired.", leased)
        yield _gauge(
            "mollifier_buffer_expired_leases",
            "Leases past their deadline, not yet reclaimed (a drainer died; none reclaims).",
            sum(s.expired_leases for s in stats),
        )
        yield _gauge(
            "mollifier_buffer_dead", "Dead-lettered entries waiting for an operator.", sum(s.dead for s in stats)
        )
        yield _gauge(
            "mollifier_buffer_oldest_age_seconds",
            "Age of the oldest queued entry (0 when nothing is queued).",
            0.0 if oldest is None else max(0, self.now_ms - oldest) / 1000,
        )
        yield _gauge(
            "mollifier_stale_entries",
            "Queued entries older than the stale threshold, as last counted by the sweep (0 while it is off).",
            sum(s.stale for s in stats) if self.sweep_enabled else 0,
        )
        yield _gauge("mollifier_drain_rate_per_second", "Entries leaving the buffer per second (last minute).", rate)
        yield _gauge(
            "mollifier_drain_eta_seconds",
            "Backlog (depth + leased) divided by the recent drain rate; +Inf when a backlog does not drain.",
            drain_eta_s(depth + leased, rate),
        )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


class _Delegate:
    """Expose an existing registry's metrics through another registry (single-process mode)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return self.registry.collect()


def exposition(
    buffer: Buffer, *, now_ms: int, stale_threshold_s: int, sweep_enabled: bool, multiproc_dir: str = ""
) -> bytes:
    """The Prometheus text for one scrape.

    With ``multiproc_dir`` the counters and histograms are the sums over every process's files there;
    without it (tests, ``runserver``) they are this process's own. The gauges come from Redis either way.
    """
    registry = CollectorRegistry(auto_describe=False)
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)
    else:
        registry.register(_Delegate(REGISTRY))
    registry.register(
        BufferCollector(buffer, now_ms=now_ms, stale_threshold_s=stale_threshold_s, sweep_enabled=sweep_enabled)
    )
    return generate_latest(registry)
